//! "Who's watching" (`GET /me/sessions`, `DELETE /me/sessions/{id}`, drisc
//! extensions): a customer sees and stops its own sessions, never another's.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Api, expect_error, random_session_id, spawn_app};
use crate::players::{Seen, live_player};

async fn my_sessions(api: &Api, token: &str, query: &str) -> reqwest::Response {
    api.http
        .get(api.url(&format!("/me/sessions{query}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn stop(api: &Api, token: &str, session_id: &str, body: Option<Value>) -> reqwest::Response {
    let mut request = api
        .http
        .request(Method::DELETE, api.url(&format!("/me/sessions/{session_id}")))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.header("content-type", "text/plain").body(body.to_string());
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn a_customer_lists_its_sessions_across_offers_and_no_one_elses() {
    let app = spawn_app().await;
    app.put_offer("p", "S1", 2, &[]).await;
    app.put_offer("p", "S2", 2, &[]).await;
    let token = app.token("p", "me");
    let tv = app.create_ok(&token, "S1", "TV").await;
    let (phone, _player) = live_player(&app, &token, "S2", "Phone").await;
    app.create_ok(&app.token("p", "someone-else"), "S1", "Theirs").await;
    app.create_ok(&app.token("other-publisher", "me"), "S1", "Same id, other publisher")
        .await;

    let response = my_sessions(&app, &token, "").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["nextCursor"], Value::Null);
    let sessions = body["sessions"].as_array().unwrap();
    let seen: Vec<_> = sessions
        .iter()
        .map(|s| {
            (
                s["sessionId"].as_str().unwrap().to_owned(),
                s["offerId"].as_str().unwrap().to_owned(),
                s["name"].as_str().unwrap().to_owned(),
                s["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (tv.session_id.clone(), "S1".into(), "TV".into(), "pending".into()),
            (phone.session_id.clone(), "S2".into(), "Phone".into(), "live".into()),
        ]
    );
    for s in sessions {
        assert!(s["createdAt"].as_u64().unwrap() > 1_700_000_000_000, "{s}");
        let mut keys: Vec<_> = s.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["createdAt", "name", "offerId", "sessionId", "state"]);
    }

    // Paged: one at a time, with a cursor.
    let first: Value = my_sessions(&app, &token, "?limit=1").await.json().await.unwrap();
    assert_eq!(first["sessions"][0]["name"], "TV");
    let cursor = first["nextCursor"].as_str().unwrap();
    let second: Value = my_sessions(&app, &token, &format!("?limit=1&cursor={cursor}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(second["sessions"][0]["name"], "Phone");
    assert_eq!(second["nextCursor"], Value::Null);

    expect_error(my_sessions(&app, "not-a-token", "").await, 401, "Unauthorized").await;
    app.stop().await;
}

#[tokio::test]
async fn stopping_a_session_remotely_tells_its_player_take_over_with_the_name_given() {
    let app = spawn_app().await;
    app.put_offer("p", "S1", 2, &[]).await;
    let token = app.token("p", "me");
    let (tv, mut player) = live_player(&app, &token, "S1", "TV").await;
    let response = stop(
        &app,
        &token,
        &tv.session_id,
        Some(json!({"sessionName": "Kitchen tablet"})),
    )
    .await;
    assert_eq!(response.status(), 204);
    assert_eq!(
        player.next_skipping_pings(true).await,
        Seen::Message(json!({"action": "TAKE_OVER", "sessionName": "Kitchen tablet"}))
    );
    player.expect_close(4001).await;
    assert_eq!(app.session_state(&tv.session_id).await, None, "its slot is free");

    // No body: the default name.
    let (phone, mut player) = live_player(&app, &token, "S1", "Phone").await;
    assert_eq!(stop(&app, &token, &phone.session_id, None).await.status(), 204);
    assert_eq!(
        player.next_skipping_pings(true).await,
        Seen::Message(json!({"action": "TAKE_OVER", "sessionName": "another device"}))
    );
    let left: Value = my_sessions(&app, &token, "").await.json().await.unwrap();
    assert_eq!(left["sessions"], json!([]));
    app.stop().await;
}

#[tokio::test]
async fn another_customers_session_answers_exactly_like_an_unknown_one() {
    let app = spawn_app().await;
    app.put_offer("p", "S1", 2, &[]).await;
    let owner = app.token("p", "owner");
    let (tv, mut player) = live_player(&app, &owner, "S1", "TV").await;
    let intruders = [app.token("p", "intruder"), app.token("p2", "owner")];
    let unknown = stop(&app, &owner, &random_session_id(), None).await;
    let unknown = expect_error(unknown, 404, "NotFound").await;
    for intruder in &intruders {
        let theirs = expect_error(stop(&app, intruder, &tv.session_id, None).await, 404, "NotFound").await;
        assert_eq!(theirs, unknown, "nothing tells the two apart");
    }
    let malformed = expect_error(stop(&app, &owner, "not-a-uuid", None).await, 404, "NotFound").await;
    assert_eq!(malformed, unknown);
    assert!(app.session_state(&tv.session_id).await.is_some(), "still held");
    player.expect_silence(std::time::Duration::from_millis(200)).await;
    app.stop().await;
}

#[tokio::test]
async fn a_bad_stop_body_is_refused_before_anything_ends() {
    let app = spawn_app().await;
    app.put_offer("p", "S1", 2, &[]).await;
    let token = app.token("p", "me");
    let tv = app.create_ok(&token, "S1", "TV").await;
    for body in [
        json!({"sessionName": "x".repeat(101)}),
        json!({"sessionName": 7}),
        json!({"name": "typo"}),
        json!(["Kitchen"]),
    ] {
        let response = stop(&app, &token, &tv.session_id, Some(body.clone())).await;
        expect_error(response, 400, "InvalidRequest").await;
    }
    assert!(app.session_state(&tv.session_id).await.is_some(), "still held");
    assert_eq!(stop(&app, "", &tv.session_id, None).await.status(), 401);
    app.stop().await;
}
