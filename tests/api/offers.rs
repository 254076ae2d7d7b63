//! Offers the server does not know cannot multiply a customer's limit, and the
//! player API bounds its input before it looks anything up (issue 8, items 4 and 5).

use std::path::Path;

use drisc::domain::settings::UnknownOffers;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::sqlite::SqliteConnectOptions;

use crate::helpers::{Answer, TestApp, all_at_once, expect_error, granted, spawn_app, spawn_app_with};
use crate::players::connect_ok;

/// Answers of `count` creates of one customer at once, each on an offer of its own making.
async fn creates_on_made_up_offers(app: &TestApp, token: &str, count: usize) -> Vec<Answer> {
    let requests = (0..count)
        .map(|i| {
            let body = json!({"offerId": format!("MADE-UP-{i}"), "sessionName": format!("device {i}")});
            app.post_request("/sessions", token, &body)
        })
        .collect();
    all_at_once(requests).await
}

fn granted_ids(answers: &[Answer]) -> Vec<String> {
    let mut ids: Vec<String> = answers
        .iter()
        .filter(|a| a.status == 200)
        .map(|a| a.body["sessionId"].as_str().expect("sessionId").to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_made_up_offer_ids_of_one_customer_hold_at_most_the_default_session_limit() {
    // Fifty creates at once from one customer: room in its rate limit for all of them.
    let app = spawn_app_with(|s| s.limits.customer_burst = 100).await;
    app.put_publisher("1", json!({"defaultSessionLimit": 2})).await;
    let token = app.token("1", "42");

    let answers = creates_on_made_up_offers(&app, &token, 50).await;
    let held = granted_ids(&answers);
    assert_eq!(
        held.len(),
        2,
        "the publisher's defaultSessionLimit, once for all unknown offers"
    );
    for Answer { status, body, .. } in &answers {
        match status {
            200 => assert!(
                body["offerId"].as_str().unwrap().starts_with("MADE-UP-"),
                "the granted body names the offer the player asked for: {body}"
            ),
            409 => {
                assert_eq!(body["code"], "LimitExceeded");
                assert_eq!(body["details"]["takeOverEnabled"], true);
                let mut listed: Vec<String> = body["details"]["activeSessions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s["sessionId"].as_str().unwrap().to_owned())
                    .collect();
                listed.sort();
                assert_eq!(listed, held, "the shared pool's sessions are the ones to take over");
            }
            other => panic!("only 200 and 409 are expected, got {other}: {body}"),
        }
    }
    assert_eq!(app.health().await["sessions"], 2);

    // The shared pool behaves as any pool: its sessions connect, and a takeover may
    // name any unknown offer, since they are all the same pool.
    let first = &held[0];
    let taken = granted(app.takeover(&token, "YET-ANOTHER", "Phone", first).await).await;
    assert_eq!(taken.body["offerId"], "YET-ANOTHER");
    let _player = connect_ok(&taken.endpoint).await;

    // A configured offer keeps its own pool and limit.
    app.put_offer("1", "S1", 1, &[]).await;
    app.create_ok(&token, "S1", "TV").await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_unknown_offers_each_a_customer_holds_sessions_in_at_most_max_pools_per_customer_pools() {
    let app = spawn_app_with(|s| {
        s.publishers.unknown_offers = UnknownOffers::Each;
        s.publishers.max_pools_per_customer = 4;
        s.limits.customer_burst = 100;
    })
    .await;
    let token = app.token("1", "42");

    let answers = creates_on_made_up_offers(&app, &token, 50).await;
    let held = granted_ids(&answers);
    assert_eq!(held.len(), 4, "exactly publishers.max_pools_per_customer pools");
    for Answer { status, body, .. } in answers.iter().filter(|a| a.status != 200) {
        assert_eq!(*status, 409, "{body}");
        assert_eq!(body["code"], "LimitExceeded", "{body}");
        assert_eq!(
            body["details"]["takeOverEnabled"], false,
            "nothing to take over: {body}"
        );
        assert_eq!(body["details"]["activeSessions"], json!([]), "{body}");
        assert!(body["message"].as_str().unwrap().contains("offers"), "{body}");
    }

    // Another customer of the same publisher is not counted with this one.
    app.create_ok(&app.token("1", "43"), "MADE-UP-0", "TV").await;

    // Giving one session back frees its pool for another offer.
    let response = app.end_session(&token, &held[0]).await;
    assert_eq!(response.status(), 204);
    app.create_ok(&token, "ONE-MORE", "TV").await;
    let refused = app.create(&token, json!({"offerId": "AND-ANOTHER"})).await;
    expect_error(refused, 409, "LimitExceeded").await;
    app.stop().await;
}

#[tokio::test]
async fn the_admin_api_takes_default_as_the_old_name_of_each_and_shows_each() {
    let app = spawn_app().await;
    let shown =
        |response: reqwest::Response| async move { response.json::<Value>().await.unwrap()["unknownOffers"].clone() };
    let put = |value: &str| {
        app.admin(
            Method::PUT,
            "/publishers/1",
            Some(json!({"unknownOffers": value, "defaultSessionLimit": 1})),
        )
    };
    assert_eq!(shown(put("default").await).await, "each");
    assert_eq!(shown(app.admin(Method::GET, "/publishers/1", None).await).await, "each");
    // Each unknown offer is its own pool again.
    let token = app.token("1", "42");
    app.create_ok(&token, "MADE-UP-1", "TV").await;
    app.create_ok(&token, "MADE-UP-2", "Phone").await;

    assert_eq!(shown(put("shared").await).await, "shared");
    let response = app
        .admin(Method::PUT, "/publishers/1", Some(json!({"unknownOffers": "some"})))
        .await;
    expect_error(response, 400, "InvalidRequest").await;
    app.stop().await;
}

#[tokio::test]
async fn a_15_kb_offer_id_is_400_naming_offer_id_before_anything_is_stored() {
    let app = spawn_app().await;
    // A publisher never seen: a create that got as far as the settings would create it.
    let token = app.token("fresh", "42");
    let huge = "x".repeat(15 * 1024);

    let refused = |body: Value, field: &'static str| {
        let app = &app;
        let token = &token;
        async move {
            let path = if body.get("sessionId").is_some() {
                "/takeover"
            } else {
                "/sessions"
            };
            let body = expect_error(app.post(path, token, body).await, 400, "InvalidRequest").await;
            let message = body["message"].as_str().unwrap();
            assert!(message.contains(field), "the message names {field}: {message}");
            assert!(message.len() < 200, "the input is not echoed: {message}");
        }
    };
    refused(json!({"offerId": huge}), "offerId").await;
    refused(json!({"offerId": "x".repeat(257)}), "offerId").await;
    refused(json!({"tag": "t".repeat(257)}), "tag").await;
    refused(json!({"offerId": "S1", "sessionName": "n".repeat(101)}), "sessionName").await;
    let victim = uuid::Uuid::new_v4().to_string();
    refused(json!({"offerId": huge, "sessionId": victim}), "offerId").await;
    refused(json!({"offerId": "S1", "sessionId": huge}), "sessionId").await;
    refused(json!({"offerId": "S1", "sessionId": "not-a-session-id"}), "sessionId").await;

    let response = app.admin(Method::GET, "/publishers/fresh", None).await;
    assert_eq!(response.status(), 404, "nothing was stored, not even the publisher");
    assert_eq!(app.health().await["sessions"], 0);

    // At the bounds, all is well: 256 bytes, 100 characters (of several bytes each).
    let body = json!({"offerId": "o".repeat(256), "sessionName": "é".repeat(100)});
    let g = granted(app.create(&token, body).await).await;
    assert_eq!(g.body["offerId"].as_str().unwrap().len(), 256);
    app.stop().await;
}

#[tokio::test]
async fn the_admin_api_refuses_the_shared_pools_offer_id_and_an_oversized_key() {
    let app = spawn_app().await;
    let response = app
        .admin(
            Method::PUT,
            "/publishers/1/offers/*unknown",
            Some(json!({"sessionLimit": 50})),
        )
        .await;
    let body = expect_error(response, 400, "InvalidRequest").await;
    assert!(body["message"].as_str().unwrap().contains("reserved"), "{body}");

    let response = app
        .admin(
            Method::PUT,
            "/publishers/1",
            Some(json!({"verificationKey": "k".repeat(9000)})),
        )
        .await;
    let body = expect_error(response, 400, "InvalidRequest").await;
    assert!(body["message"].as_str().unwrap().contains("verificationKey"), "{body}");

    // A player naming that id under "shared" just lands in the shared pool.
    let token = app.token("1", "42");
    app.create_ok(&token, "*unknown", "TV").await;
    expect_error(
        app.create(&token, json!({"offerId": "MADE-UP"})).await,
        409,
        "LimitExceeded",
    )
    .await;
    app.stop().await;
}

/// Writes a settings database as the first release left it: its one migration
/// applied, and a publisher saying `unknown_offers = 'default'` with one offer.
async fn database_of_the_first_release(data_dir: &Path) {
    let first = tempfile::tempdir().unwrap();
    let name = "20261124000001_settings.sql";
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations/sqlite")
        .join(name);
    std::fs::copy(source, first.path().join(name)).unwrap();
    let options = SqliteConnectOptions::new()
        .filename(data_dir.join("drisc.db"))
        .create_if_missing(true)
        .foreign_keys(true);
    let db = sqlx::SqlitePool::connect_with(options).await.unwrap();
    sqlx::migrate::Migrator::new(first.path())
        .await
        .unwrap()
        .run(&db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO publishers (id, default_session_limit, unknown_offers) VALUES ('old', 1, 'default')")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO offers (publisher_id, id, session_limit, tags) VALUES ('old', 'S1', 3, '[\"live\"]')")
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
}

#[tokio::test]
async fn a_stored_publisher_with_the_old_default_value_reads_as_each_and_keeps_its_offers() {
    let data_dir = tempfile::tempdir().unwrap();
    database_of_the_first_release(data_dir.path()).await;
    let dir = data_dir.path().to_owned();
    let app = spawn_app_with(move |s| s.storage.data_dir = dir).await;

    let publisher: Value = app
        .admin(Method::GET, "/publishers/old", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(publisher["unknownOffers"], "each", "{publisher}");
    assert_eq!(
        publisher["offers"],
        json!([{"offerId": "S1", "sessionLimit": 3, "tags": ["live"], "takeoverEnabled": null}]),
        "rebuilding the table kept the offers"
    );
    let token = app.token("old", "42");
    app.create_ok(&token, "MADE-UP-1", "TV").await;
    app.create_ok(&token, "MADE-UP-2", "Phone").await;
    app.stop().await;
}
