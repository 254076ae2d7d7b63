//! Customer tokens at `POST /sessions`: the Authorization header, signatures and
//! algorithms, the claims a token must carry, and the keys that verify it (the
//! development secret, a server-wide key, a publisher's own key). What identity
//! providers add (aud, iss, nbf, lifetimes, JWKS) is in tokens.rs.

use jsonwebtoken::Algorithm;
use serde_json::json;

use crate::helpers::{
    TEXT_PLAIN, TestApp, base64_url, customer_claims, customer_token, ec_signing_key, exp_in, expect_error, fixture,
    forged_token, rsa_signing_key, sign_dev, sign_hs, sign_with, spawn_app, spawn_app_with,
};

/// `POST /sessions` with a valid body and whatever `Authorization` header is given.
async fn create_with_authorization(app: &TestApp, authorization: Option<&str>) -> reqwest::Response {
    let mut request = app
        .http
        .post(app.url("/sessions"))
        .header("content-type", TEXT_PLAIN)
        .body(json!({"offerId": "S1", "sessionName": "TV"}).to_string());
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    request.send().await.unwrap()
}

/// The customer token must be refused with 401, and the server must still hold
/// exactly `held` sessions: a refused token takes no slot.
async fn assert_unauthorized_holding(app: &TestApp, authorization: Option<&str>, held: u64) {
    let response = create_with_authorization(app, authorization).await;
    expect_error(response, 401, "Unauthorized").await;
    assert_eq!(
        app.health().await["sessions"],
        held,
        "a refused token must hold no slot"
    );
}

async fn assert_unauthorized(app: &TestApp, authorization: Option<&str>) {
    assert_unauthorized_holding(app, authorization, 0).await;
}

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
    let expired = sign_dev(json!({"publisherId": "1", "customerId": "42", "exp": exp_in(-120)}));
    assert_unauthorized(&app, Some(&format!("Bearer {expired}"))).await;
    app.stop().await;
}

#[tokio::test]
async fn a_token_expired_within_the_leeway_is_still_accepted() {
    let app = spawn_app().await;
    let just_expired = sign_dev(json!({"publisherId": "1", "customerId": "42", "exp": exp_in(-5)}));
    app.create_ok(&just_expired, "S1", "TV").await;
    app.stop().await;
}

#[tokio::test]
async fn a_token_signed_with_the_wrong_secret_is_401() {
    let app = spawn_app().await;
    let forged = forged_token("1", "42");
    assert_unauthorized(&app, Some(&format!("Bearer {forged}"))).await;
    app.stop().await;
}

#[tokio::test]
async fn an_alg_none_token_is_401() {
    let app = spawn_app().await;
    let payload = base64_url(customer_claims("1", "42").to_string());
    for header in [r#"{"alg":"none"}"#, r#"{"alg":"none","typ":"JWT"}"#] {
        let token = format!("{}.{payload}.", base64_url(header));
        assert_unauthorized(&app, Some(&format!("Bearer {token}"))).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn a_token_without_exp_is_401() {
    let app = spawn_app().await;
    let token = sign_dev(json!({"publisherId": "1", "customerId": "42"}));
    assert_unauthorized(&app, Some(&format!("Bearer {token}"))).await;
    app.stop().await;
}

#[tokio::test]
async fn a_token_without_customer_id_is_401() {
    let app = spawn_app().await;
    let token = sign_dev(json!({"publisherId": "1", "exp": exp_in(600)}));
    assert_unauthorized(&app, Some(&format!("Bearer {token}"))).await;
    app.stop().await;
}

#[tokio::test]
async fn a_token_without_publisher_id_is_401() {
    let app = spawn_app().await;
    let token = sign_dev(json!({"customerId": "42", "exp": exp_in(600)}));
    assert_unauthorized(&app, Some(&format!("Bearer {token}"))).await;
    app.stop().await;
}

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
    assert_eq!(app.end_session(&dev_token, &before.session_id).await.status(), 204);

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
    assert_unauthorized_holding(&app, Some(&format!("Bearer {rsa_token}")), 1).await;
    app.stop().await;
}

#[tokio::test]
async fn the_server_wide_key_from_config_can_be_an_rsa_public_key() {
    let app = spawn_app_with(|s| s.auth.customer_key = fixture("rsa-public.pem").into()).await;
    let token = sign_with(Algorithm::RS256, &rsa_signing_key(), &customer_claims("1", "42"));
    app.create_ok(&token, "S1", "TV").await;

    // The development secret no longer verifies anything.
    let dev_token = customer_token("1", "43");
    assert_unauthorized_holding(&app, Some(&format!("Bearer {dev_token}")), 1).await;
    app.stop().await;
}
