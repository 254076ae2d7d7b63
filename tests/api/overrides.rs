//! Per-customer overrides (`/admin/v1/publishers/{p}/customers/{c}/offers/{o}`, a
//! drisc extension): stored, validated, and applied to the customer's creates.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{expect_error, limit_exceeded, spawn_app};

const PATH: &str = "/publishers/p/customers/fan/offers/S1";

#[tokio::test]
async fn an_override_is_put_read_and_deleted() {
    let app = spawn_app().await;
    app.put_offer("p", "S1", 1, &[]).await;
    expect_error(app.admin(Method::GET, PATH, None).await, 404, "NotFound").await;

    let body = json!({"sessionLimit": 3, "expiresAt": "2999-12-31T23:00:00+01:00"});
    let response = app.admin(Method::PUT, PATH, Some(body)).await;
    assert_eq!(response.status(), 200);
    let stored: Value = response.json().await.unwrap();
    let expected = json!({
        "active": true,
        "customerId": "fan",
        "expiresAt": "2999-12-31T22:00:00Z",
        "offerId": "S1",
        "publisherId": "p",
        "sessionLimit": 3,
    });
    assert_eq!(stored, expected);
    let read: Value = app.admin(Method::GET, PATH, None).await.json().await.unwrap();
    assert_eq!(read, expected);

    // Expired: still shown, no longer active.
    let past = json!({"sessionLimit": 3, "expiresAt": "2020-01-01T00:00:00Z"});
    let stored: Value = app.admin(Method::PUT, PATH, Some(past)).await.json().await.unwrap();
    assert_eq!(stored["active"], false);
    let forever = json!({"sessionLimit": 2, "expiresAt": null});
    let stored: Value = app.admin(Method::PUT, PATH, Some(forever)).await.json().await.unwrap();
    assert_eq!(
        (stored["active"].clone(), stored["expiresAt"].clone()),
        (json!(true), Value::Null)
    );

    assert_eq!(app.admin(Method::DELETE, PATH, None).await.status(), 204);
    expect_error(app.admin(Method::DELETE, PATH, None).await, 404, "NotFound").await;
    expect_error(app.admin(Method::GET, PATH, None).await, 404, "NotFound").await;
    app.stop().await;
}

#[tokio::test]
async fn bad_overrides_unknown_offers_and_missing_keys_are_refused() {
    let app = spawn_app().await;
    app.put_offer("p", "S1", 1, &[]).await;
    for body in [
        json!({"sessionLimit": 10_001, "expiresAt": null}),
        json!({"sessionLimit": 2, "expiresAt": "tomorrow"}),
        json!({"sessionLimit": 2, "expiresAt": null, "extra": 1}),
        json!({"expiresAt": null}),
    ] {
        let response = app.admin(Method::PUT, PATH, Some(body.clone())).await;
        let refused = expect_error(response, 400, "InvalidRequest").await;
        assert!(!refused["message"].as_str().unwrap().is_empty(), "{body}");
    }
    let ok = json!({"sessionLimit": 2, "expiresAt": null});
    for path in [
        "/publishers/nobody/customers/fan/offers/S1",
        "/publishers/p/customers/fan/offers/unknown",
        "/publishers/p/customers/fan/offers/*unknown",
    ] {
        expect_error(app.admin(Method::PUT, path, Some(ok.clone())).await, 404, "NotFound").await;
        expect_error(app.admin(Method::GET, path, None).await, 404, "NotFound").await;
    }
    let anonymous = app
        .http
        .put(app.url(&format!("/admin/v1{PATH}")))
        .json(&ok)
        .send()
        .await
        .unwrap();
    expect_error(anonymous, 401, "Unauthorized").await;
    app.stop().await;
}

#[tokio::test]
async fn an_override_changes_that_customers_limit_at_once_and_expiry_restores_the_offers() {
    let app = spawn_app().await;
    app.put_offer("p", "S1", 1, &[]).await;
    let (fan, other) = (app.token("p", "fan"), app.token("p", "other"));
    app.create_ok(&fan, "S1", "TV").await;
    limit_exceeded(&app, &fan, json!({"offerId": "S1"})).await;

    // Read back at once on the node that wrote it.
    let boost = json!({"sessionLimit": 3, "expiresAt": "2999-01-01T00:00:00Z"});
    assert_eq!(app.admin(Method::PUT, PATH, Some(boost)).await.status(), 200);
    app.create_ok(&fan, "S1", "Phone").await;
    app.create_ok(&fan, "S1", "Laptop").await;
    let refused = limit_exceeded(&app, &fan, json!({"offerId": "S1"})).await;
    assert_eq!(refused["details"]["activeSessions"].as_array().unwrap().len(), 3);
    // Another customer of the offer is not boosted.
    app.create_ok(&other, "S1", "TV").await;
    limit_exceeded(&app, &other, json!({"offerId": "S1"})).await;

    // Expired: new sessions get the offer's limit; the three held are not ended.
    let expired = json!({"sessionLimit": 3, "expiresAt": "2020-01-01T00:00:00Z"});
    assert_eq!(app.admin(Method::PUT, PATH, Some(expired)).await.status(), 200);
    limit_exceeded(&app, &fan, json!({"offerId": "S1"})).await;
    let listed: Value = app
        .admin(Method::GET, "/sessions?publisherId=p&customerId=fan", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 3, "{listed}");

    // Deleting the offer deletes its overrides.
    assert_eq!(
        app.admin(Method::DELETE, "/publishers/p/offers/S1", None)
            .await
            .status(),
        204
    );
    app.put_offer("p", "S1", 1, &[]).await;
    expect_error(app.admin(Method::GET, PATH, None).await, 404, "NotFound").await;
    app.stop().await;
}
