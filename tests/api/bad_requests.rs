//! What the player API refuses before it admits anything, each as a JSON error:
//! bodies that are not a create (400), bodies too large (413), and routes that do
//! not exist (404).

use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_KEY, TEXT_PLAIN, TestApp, active_sessions, expect_error, granted, limit_exceeded, spawn_app, spawn_app_with,
};

/// `POST path` with a raw body (sent as text/plain, as browsers do).
async fn post_raw(app: &TestApp, path: &str, token: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
    app.http
        .post(app.url(path))
        .bearer_auth(token)
        .header("content-type", TEXT_PLAIN)
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn both_offer_id_and_tag_is_a_400() {
    let app = spawn_app().await;
    app.put_offer("1", "S1", 1, &["live"]).await;
    let response = app
        .create(
            &app.token("1", "42"),
            json!({"offerId": "S1", "tag": "live", "sessionName": "TV"}),
        )
        .await;
    expect_error(response, 400, "InvalidRequest").await;
    assert_eq!(app.health().await["sessions"], 0);
    app.stop().await;
}

#[tokio::test]
async fn neither_offer_id_nor_tag_is_a_400() {
    let app = spawn_app().await;
    let token = app.token("1", "42");
    for body in [json!({"sessionName": "TV"}), json!({})] {
        expect_error(app.create(&token, body).await, 400, "InvalidRequest").await;
    }
    assert_eq!(app.health().await["sessions"], 0);
    app.stop().await;
}

#[tokio::test]
async fn a_session_name_over_100_characters_is_a_400_and_100_characters_are_fine() {
    let app = spawn_app().await;
    // A pool per offer, so each name below fills a pool of its own.
    app.put_publisher("1", json!({"defaultSessionLimit": 1, "unknownOffers": "each"}))
        .await;
    let token = app.token("1", "42");

    // Counted in characters, not bytes: 100 two-byte and 100 four-byte characters pass.
    for (offer, name) in [
        ("N1", "a".repeat(100)),
        ("N2", "é".repeat(100)),
        ("N3", "📺".repeat(100)),
    ] {
        let response = app.create(&token, json!({"offerId": offer, "sessionName": name})).await;
        granted(response).await;
        let refused = limit_exceeded(&app, &token, json!({"offerId": offer})).await;
        assert_eq!(active_sessions(&refused)[0].1, name, "the name is kept as given");
    }
    for name in ["a".repeat(101), "é".repeat(101), "📺".repeat(101)] {
        let response = app.create(&token, json!({"offerId": "N4", "sessionName": name})).await;
        expect_error(response, 400, "InvalidRequest").await;
    }
    assert_eq!(app.health().await["sessions"], 3);
    app.stop().await;
}

#[tokio::test]
async fn malformed_json_is_a_400() {
    let app = spawn_app().await;
    let token = app.token("1", "42");
    for body in [r#"{"offerId": "S1","#, "not json", r#"{"offerId": 5}"#] {
        let response = post_raw(&app, "/sessions", &token, body).await;
        expect_error(response, 400, "InvalidRequest").await;
    }
    assert_eq!(app.health().await["sessions"], 0);
    app.stop().await;
}

#[tokio::test]
async fn an_empty_body_is_a_400() {
    let app = spawn_app().await;
    let token = app.token("1", "42");
    for body in ["", "  \n"] {
        let response = post_raw(&app, "/sessions", &token, body).await;
        expect_error(response, 400, "InvalidRequest").await;
    }
    app.stop().await;
}

#[tokio::test]
async fn a_json_array_body_is_a_400() {
    let app = spawn_app().await;
    app.put_publisher("1", json!({})).await;
    let token = app.token("1", "42");
    let held = app.create_ok(&app.token("1", "43"), "S1", "TV").await;
    let mut accepted = Vec::new();
    let mut check = async |what: String, response: reqwest::Response| {
        let status = response.status();
        let text = response.text().await.unwrap();
        let code = serde_json::from_str::<Value>(&text).ok().map(|v| v["code"].clone());
        if status != 400 || code != Some(json!("InvalidRequest")) {
            accepted.push(format!("{what} answered {status}: {text}"));
        }
    };
    for body in [
        "[]".to_owned(),
        json!([{"offerId": "S1", "sessionName": "TV"}]).to_string(),
        // The four fields of the request, by position.
        json!(["TV", "S1", null, null]).to_string(),
    ] {
        let response = post_raw(&app, "/sessions", &token, body.clone()).await;
        check(format!("POST /sessions {body}"), response).await;
    }
    let body = json!(["Phone", "S1", null, held.session_id]).to_string();
    let response = post_raw(&app, "/takeover", &app.token("1", "43"), body.clone()).await;
    check(format!("POST /takeover {body}"), response).await;
    // The admin API reads its bodies the same way: by position, `enabled` comes first.
    let body = "[false, null, null, null, null]";
    let response = app
        .http
        .put(app.url("/admin/v1/publishers/1"))
        .bearer_auth(ADMIN_KEY)
        .body(body)
        .send()
        .await
        .unwrap();
    check(format!("PUT /admin/v1/publishers/1 {body}"), response).await;

    assert!(
        accepted.is_empty(),
        "a JSON array is not a request object, yet:\n{}",
        accepted.join("\n")
    );
    app.stop().await;
}

#[tokio::test]
async fn a_body_over_max_body_bytes_is_a_413() {
    let app = spawn_app_with(|s| s.server.max_body_bytes = 1024).await;
    let token = app.token("1", "42");
    // Unknown keys are ignored, so padding makes a body of any size.
    let body =
        |padding: usize| json!({"offerId": "S1", "sessionName": "TV", "padding": "x".repeat(padding)}).to_string();

    let small = body(900);
    assert!(small.len() <= 1024);
    granted(post_raw(&app, "/sessions", &token, small).await).await;

    let large = body(2000);
    assert!(large.len() > 1024);
    let error = expect_error(post_raw(&app, "/sessions", &token, large).await, 413, "PayloadTooLarge").await;
    assert!(error["message"].as_str().unwrap().contains("1024"), "{error}");
    app.stop().await;
}

#[tokio::test]
async fn a_body_over_the_default_limit_is_a_413() {
    let app = spawn_app().await;
    assert_eq!(app.settings.server.max_body_bytes, 16384);
    let body = json!({"offerId": "S1", "padding": "x".repeat(20_000)}).to_string();
    let response = post_raw(&app, "/sessions", &app.token("1", "42"), body).await;
    expect_error(response, 413, "PayloadTooLarge").await;
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_route_is_a_json_404() {
    let app = spawn_app().await;
    let response = app.http.get(app.url("/no/such/route")).send().await.unwrap();
    expect_error(response, 404, "NotFound").await;
    let response = app
        .post("/sessionz", &app.token("1", "42"), json!({"offerId": "S1"}))
        .await;
    expect_error(response, 404, "NotFound").await;
    app.stop().await;
}

/// A client still sending a body far over the limit reads the 413, which says
/// `connection: close`: the rest of the body is not read, so the server closes
/// the connection, and a client that did not know would send its next request on
/// it and fail ("error sending request", seen in the fuzz test of create bodies).
#[tokio::test]
async fn a_client_still_sending_a_body_over_the_limit_reads_the_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    let token = app.token("1", "42");
    let length = 300_000;
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    let head = format!(
        "POST /sessions HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {token}\r\n\
         content-type: text/plain\r\ncontent-length: {length}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'x'; 15_000];
    for _ in 0..length / chunk.len() {
        // The server may have answered and closed: a failed write is what is tested.
        if tcp.write_all(&chunk).await.is_err() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(crate::helpers::PATIENCE, tcp.read_to_end(&mut answer))
        .await
        .expect("the server answers in time");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "read {read:?}, answer: {text:?}");
    assert!(text.contains("PayloadTooLarge"), "{text}");
    let head = text.split("\r\n\r\n").next().unwrap_or_default().to_ascii_lowercase();
    assert!(head.contains("\r\nconnection: close\r\n"), "{text}");
    app.stop().await;
}
