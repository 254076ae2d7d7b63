//! The operator's view of sessions: one shown and kicked, a customer's listed page
//! by page and all ended at once (`/admin/v1/sessions`, `DELETE
//! .../customers/{c}/sessions`), and the publishers listed page by page.

use std::collections::HashSet;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, expect_error, spawn_app};
use crate::players::live_player;

async fn get_json(app: &TestApp, path: &str) -> Value {
    let response = app.admin(Method::GET, path, None).await;
    assert_eq!(response.status(), 200, "GET {path}");
    response.json().await.unwrap()
}

/// Every item under `list` of every page of `path?query` (a query without paging),
/// `limit` a page, following nextCursor until it is null.
async fn walk(app: &TestApp, path: &str, query: &str, list: &str, limit: u32) -> Vec<Value> {
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut url = format!("{path}?limit={limit}");
        if !query.is_empty() {
            url.push_str(&format!("&{query}"));
        }
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page = get_json(app, &url).await;
        let items = page[list].as_array().unwrap();
        assert!(items.len() <= limit as usize, "{page}");
        seen.extend(items.iter().cloned());
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => {
                assert!(page["nextCursor"].is_null(), "nextCursor is a string or null: {page}");
                return seen;
            }
        }
    }
    panic!("the walk never ended");
}

fn ids(sessions: &[Value]) -> Vec<String> {
    sessions
        .iter()
        .map(|s| s["sessionId"].as_str().unwrap().to_owned())
        .collect()
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
async fn paging_through_a_customers_sessions_meets_each_exactly_once_and_no_other_customers() {
    let app = spawn_app().await;
    app.put_offer("1", "S1", 5, &[]).await;
    app.put_offer("1", "S2", 5, &[]).await;
    let token = app.token("1", "42");
    let mut held = HashSet::new();
    for (offer, count) in [("S1", 3), ("S2", 4)] {
        for i in 0..count {
            held.insert(app.create_ok(&token, offer, &format!("device {i}")).await.session_id);
        }
    }
    // Customers whose ids start alike, and the same customer id at another publisher.
    app.put_offer("2", "S1", 5, &[]).await;
    for (publisher, customer) in [("1", "4"), ("1", "420"), ("2", "42")] {
        app.create_ok(&app.token(publisher, customer), "S1", "theirs").await;
    }

    for limit in [1, 2, 3, 1000] {
        let seen = walk(&app, "/sessions", "publisherId=1&customerId=42", "sessions", limit).await;
        let seen_ids = ids(&seen);
        assert_eq!(seen_ids.len(), held.len(), "pages of {limit}: none twice");
        assert_eq!(seen_ids.into_iter().collect::<HashSet<_>>(), held, "pages of {limit}");
        assert!(
            seen.iter().all(|s| s["publisherId"] == "1" && s["customerId"] == "42"),
            "{seen:?}"
        );
    }

    let page = get_json(&app, "/sessions?publisherId=1&customerId=42&offerId=S1").await;
    let sessions = page["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 3);
    assert!(page["nextCursor"].is_null());
    let first = &sessions[0];
    assert_eq!(first["offerId"], "S1");
    assert_eq!(first["state"], "pending");
    assert!(first["name"].as_str().unwrap().starts_with("device"));
    assert!(first["createdAt"].as_u64().unwrap() > 0);
    assert!(first["expiresAt"].as_u64().unwrap() > first["createdAt"].as_u64().unwrap());

    let none = get_json(&app, "/sessions?publisherId=1&customerId=nobody").await;
    assert_eq!(none, json!({"sessions": [], "nextCursor": null}));
    app.stop().await;
}

#[tokio::test]
async fn the_session_list_refuses_missing_ids_bad_limits_and_made_up_cursors() {
    let app = spawn_app().await;
    let body = expect_error(
        app.admin(Method::GET, "/sessions?customerId=42", None).await,
        400,
        "InvalidRequest",
    )
    .await;
    assert!(body["message"].as_str().unwrap().contains("publisherId"), "{body}");
    let body = expect_error(
        app.admin(Method::GET, "/sessions?publisherId=1", None).await,
        400,
        "InvalidRequest",
    )
    .await;
    assert!(body["message"].as_str().unwrap().contains("customerId"), "{body}");
    let long = "x".repeat(300);
    for query in [
        format!("publisherId=1&customerId={long}"),
        "publisherId=1&customerId=42&offerId=".to_owned(),
        "publisherId=1&customerId=42&limit=0".to_owned(),
        "publisherId=1&customerId=42&limit=1001".to_owned(),
        "publisherId=1&customerId=42&cursor=not-ours".to_owned(),
    ] {
        expect_error(
            app.admin(Method::GET, &format!("/sessions?{query}"), None).await,
            400,
            "InvalidRequest",
        )
        .await;
    }
    let anonymous = app
        .http
        .get(app.url("/admin/v1/sessions?publisherId=1&customerId=42"))
        .send()
        .await
        .unwrap();
    expect_error(anonymous, 401, "Unauthorized").await;
    app.stop().await;
}

#[tokio::test]
async fn ending_a_customers_sessions_expires_their_players_and_frees_their_slots() {
    let app = spawn_app().await;
    app.put_offer("1", "S1", 1, &[]).await;
    app.put_offer("1", "S2", 1, &[]).await;
    let token = app.token("1", "42");
    let (_, mut on_s1) = live_player(&app, &token, "S1", "TV").await;
    let (_, mut on_s2) = live_player(&app, &token, "S2", "Phone").await;
    let neighbour = app.token("1", "43");
    let (spared, _neighbour_player) = live_player(&app, &neighbour, "S1", "TV").await;

    // One offer only: the other player keeps playing.
    let path = "/publishers/1/customers/42/sessions";
    let response = app.admin(Method::DELETE, &format!("{path}?offerId=S2"), None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"ended": 1}));
    on_s2.expect("EXPIRED").await;
    on_s2.expect_close(4003).await;
    app.create_ok(&token, "S2", "Laptop").await;

    // Every offer: the player on S1 and the new pending session on S2.
    let response = app.admin(Method::DELETE, path, None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"ended": 2}));
    on_s1.expect("EXPIRED").await;
    on_s1.expect_close(4003).await;
    let left = get_json(&app, "/sessions?publisherId=1&customerId=42").await;
    assert_eq!(left["sessions"], json!([]));
    app.create_ok(&token, "S1", "TV again").await;
    app.create_ok(&token, "S2", "Phone again").await;

    // Nothing of customer 43's was touched.
    let theirs = get_json(&app, "/sessions?publisherId=1&customerId=43").await;
    assert_eq!(ids(theirs["sessions"].as_array().unwrap()), vec![spared.session_id]);
    assert_eq!(theirs["sessions"][0]["state"], "live");

    // Nobody left to end is not an error.
    let response = app
        .admin(Method::DELETE, "/publishers/1/customers/nobody/sessions", None)
        .await;
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"ended": 0}));
    app.stop().await;
}

#[tokio::test]
async fn publishers_are_listed_page_by_page_in_id_order() {
    let app = spawn_app().await;
    let mut expected = vec!["b", "a", "B", "a-b", "ab", "é"];
    for id in &expected {
        app.put_publisher(id, json!({})).await;
    }
    expected.sort();
    for limit in [1, 2, 5, 1000] {
        let walked = walk(&app, "/publishers", "", "publishers", limit).await;
        let ids: Vec<&str> = walked.iter().map(|p| p["publisherId"].as_str().unwrap()).collect();
        assert_eq!(ids, expected, "pages of {limit}");
    }
    // Without paging parameters: every publisher (up to 100), as before, and null.
    let all = get_json(&app, "/publishers").await;
    assert_eq!(all["publishers"].as_array().unwrap().len(), expected.len());
    assert_eq!(all["publishers"][0]["publisherId"], "B");
    assert!(all["nextCursor"].is_null());
    expect_error(
        app.admin(Method::GET, "/publishers?limit=5000", None).await,
        400,
        "InvalidRequest",
    )
    .await;
    app.stop().await;
}
