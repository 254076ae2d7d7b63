//! Property tests against the running server: arbitrary request bodies and
//! arbitrary customer tokens always get a clear answer (a JSON error with a code
//! and a message, or a grant), never a 5xx, a panic or a hang.
//!
//! Bounded for CI (`CASES`); `PROPTEST_CASES=5000 cargo test --test api fuzz` runs
//! longer locally.

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

use crate::helpers::{TestApp, exp_in, sign_dev, spawn_app};

const CASES: u32 = 200;

fn runner() -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(CASES);
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        // Long strings: the bounds on ids and names must hold.
        (200usize..20_000).prop_map(|n| Value::from("x".repeat(n))),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::hash_map("[a-zA-Z]{0,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A create body: mostly the fields the API knows, with values of any type.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let field = prop_oneof![
        Just("offerId".to_owned()),
        Just("tag".to_owned()),
        Just("sessionName".to_owned()),
        Just("sessionId".to_owned()),
        "[a-zA-Z]{1,12}",
    ];
    let object = proptest::collection::vec((field, json_value()), 0..5).prop_map(|fields| {
        let map: serde_json::Map<String, Value> = fields.into_iter().collect();
        Value::Object(map).to_string().into_bytes()
    });
    prop_oneof![
        6 => object,
        1 => json_value().prop_map(|v| v.to_string().into_bytes()),
        1 => proptest::collection::vec(any::<u8>(), 0..600),
    ]
}

/// A customer token: random text, random segments, or well signed with random claims.
fn token() -> impl Strategy<Value = String> {
    let claims = (
        json_value(),
        json_value(),
        prop_oneof![json_value(), Just(json!(exp_in(600)))],
    )
        .prop_map(|(publisher, customer, exp)| {
            sign_dev(json!({"publisherId": publisher, "customerId": customer, "exp": exp}))
        });
    let segments = proptest::collection::vec("[A-Za-z0-9_-]{0,60}", 1..5).prop_map(|s| s.join("."));
    prop_oneof![
        2 => claims,
        1 => segments,
        1 => "[ -~]{1,200}",
    ]
}

/// Checks one answer: a grant, or a JSON error with a code and a message; never 5xx.
async fn check_answer(response: reqwest::Response, allowed: &[u16]) -> Result<(), TestCaseError> {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    prop_assert!(allowed.contains(&status), "status {status}: {text}");
    if status == 431 {
        // A head over server.max_header_bytes is refused by the HTTP layer itself,
        // before any request exists to answer in JSON.
        return Ok(());
    }
    let body: Value =
        serde_json::from_str(&text).map_err(|e| TestCaseError::fail(format!("not JSON ({e}): {text}")))?;
    if status != 200 {
        prop_assert!(body["code"].as_str().is_some_and(|c| !c.is_empty()), "{body}");
        prop_assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    }
    Ok(())
}

fn with_server(test: impl FnOnce(&tokio::runtime::Runtime, &TestApp)) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(spawn_app());
    test(&rt, &app);
    rt.block_on(app.stop());
}

#[test]
fn arbitrary_create_and_takeover_bodies_get_a_clear_answer() {
    with_server(|rt, app| {
        let token = app.token("fuzz", "body");
        runner()
            .run(&(body(), any::<bool>()), |(body, takeover)| {
                rt.block_on(async {
                    let path = if takeover { "/takeover" } else { "/sessions" };
                    let response = tokio::time::timeout(
                        Duration::from_secs(5),
                        app.http
                            .post(app.url(path))
                            .bearer_auth(&token)
                            .header("content-type", "text/plain")
                            .body(body)
                            .send(),
                    )
                    .await
                    .map_err(|_| TestCaseError::fail("no answer within 5 s"))?
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    check_answer(response, &[200, 400, 403, 404, 409, 413, 429, 431]).await
                })
            })
            .unwrap();
    });
}

#[test]
fn arbitrary_customer_tokens_get_a_clear_answer() {
    with_server(|rt, app| {
        runner()
            .run(&token(), |token| {
                rt.block_on(async {
                    let response = tokio::time::timeout(
                        Duration::from_secs(5),
                        app.http
                            .post(app.url("/sessions"))
                            .bearer_auth(&token)
                            .body(r#"{"offerId":"S1"}"#)
                            .send(),
                    )
                    .await
                    .map_err(|_| TestCaseError::fail("no answer within 5 s"))?
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    check_answer(response, &[200, 400, 401, 403, 404, 409, 429, 431]).await
                })
            })
            .unwrap();
    });
}
