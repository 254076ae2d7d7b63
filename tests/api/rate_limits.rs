//! Rate limits (429 `RateLimited` with `Retry-After`) and the WebSocket message budget.

use std::time::Duration;

use drisc::Settings;
use reqwest::Response;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{
    ADMIN_KEY, Answer, TestApp, creates_at_once, customer_token, expect_error, forged_token, spawn_app_with,
};
use crate::players::{Player, Seen, live_player};

/// A `POST /sessions` on offer S1, optionally through a proxy that says who sent it.
async fn create_from(app: &TestApp, token: &str, forwarded_for: Option<&str>) -> Response {
    let mut request = app
        .http
        .post(app.url("/sessions"))
        .bearer_auth(token)
        .body(json!({"offerId": "S1", "sessionName": "TV"}).to_string());
    if let Some(addr) = forwarded_for {
        request = request.header("x-forwarded-for", addr);
    }
    request.send().await.unwrap()
}

/// A 429 must say, in whole seconds of at least one, when to come back.
fn retry_after_secs(response: &Response) -> u64 {
    let value = response.headers().get("retry-after").expect("a 429 has Retry-After");
    let secs: u64 = value.to_str().unwrap().parse().expect("Retry-After is whole seconds");
    assert!(secs >= 1, "Retry-After {secs}");
    secs
}

async fn expect_rate_limited(response: Response) -> u64 {
    let secs = retry_after_secs(&response);
    expect_error(response, 429, "RateLimited").await;
    secs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_flooding_creates_gets_429_while_another_customers_creates_are_all_granted() {
    let app = spawn_app_with(|s| {
        s.limits.customer_per_second = 2;
        s.limits.customer_burst = 10;
    })
    .await;
    app.put_offer("p", "S1", 1000, &[]).await;
    let (flooder, bystander) = (app.token("p", "A"), app.token("p", "B"));

    // Both in the same moment: 60 from A, and B's 10, which are within its burst.
    let (flood, fair) = tokio::join!(
        creates_at_once(&app, &flooder, "S1", 60),
        creates_at_once(&app, &bystander, "S1", 10)
    );

    for answer in &fair {
        assert_eq!(answer.status, 200, "customer B is not slowed by A: {}", answer.body);
    }
    let limited: Vec<_> = flood.iter().filter(|a| a.status == 429).collect();
    let served = flood.iter().filter(|a| a.status == 200).count();
    assert!(
        (10..=12).contains(&served),
        "A gets its burst and no more: {served} served"
    );
    assert_eq!(limited.len(), 60 - served, "every other create of A is refused");
    for Answer { retry_after, body, .. } in limited {
        assert_eq!(body["code"], "RateLimited", "{body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
        let secs: u64 = retry_after.as_deref().expect("Retry-After").parse().unwrap();
        assert!(secs >= 1);
    }
    app.stop().await;
}

#[tokio::test]
async fn a_refused_customer_is_served_again_after_retry_after_and_takeovers_share_its_budget() {
    let app = spawn_app_with(|s| {
        s.limits.customer_per_second = 2;
        s.limits.customer_burst = 2;
    })
    .await;
    app.put_offer("p", "S1", 10, &[]).await;
    let token = app.token("p", "A");
    let tv = app.create_ok(&token, "S1", "TV").await;
    app.create_ok(&token, "S1", "Phone").await;
    expect_rate_limited(create_from(&app, &token, None).await).await;
    let secs = expect_rate_limited(app.takeover(&token, "S1", "Laptop", &tv.session_id).await).await;

    tokio::time::sleep(Duration::from_secs(secs)).await;
    app.create_ok(&token, "S1", "Laptop").await;
    app.stop().await;
}

#[tokio::test]
async fn failed_authentications_from_one_address_turn_into_429_even_for_a_valid_token_or_admin_key() {
    let app = spawn_app_with(|s| s.limits.failed_auth_burst = 3).await;
    let valid = app.token("p", "A");
    assert_eq!(create_from(&app, &valid, None).await.status(), 200, "served before");
    let forged = forged_token("p", "A");
    for _ in 0..3 {
        expect_error(create_from(&app, &forged, None).await, 401, "Unauthorized").await;
    }
    expect_rate_limited(create_from(&app, &forged, None).await).await;

    // Blocked now: neither the valid token nor the admin key is even looked at.
    expect_rate_limited(create_from(&app, &valid, None).await).await;
    let admin = app
        .http
        .get(app.url("/admin/v1/publishers"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    expect_rate_limited(admin).await;
    // What needs no credentials still answers.
    assert_eq!(app.health().await["status"], "ok");
    app.stop().await;
}

#[tokio::test]
async fn wrong_admin_keys_count_as_failed_authentications_too() {
    let app = spawn_app_with(|s| s.limits.failed_auth_burst = 2).await;
    let admin = |key: &'static str| app.http.get(app.url("/admin/v1/publishers")).bearer_auth(key).send();
    expect_error(admin("guess-1").await.unwrap(), 401, "Unauthorized").await;
    expect_error(admin("guess-2").await.unwrap(), 401, "Unauthorized").await;
    expect_rate_limited(admin("guess-3").await.unwrap()).await;
    expect_rate_limited(admin(ADMIN_KEY).await.unwrap()).await;
    app.stop().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_only_the_forwarded_address_that_failed_is_blocked() {
    let app = spawn_app_with(|s| {
        s.limits.failed_auth_burst = 2;
        s.limits.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    let valid = app.token("p", "A");
    let forged = forged_token("p", "A");
    // The client writes its own first entry; the proxy appends the address it saw.
    let attacker = "192.0.2.50, 198.51.100.7";
    for _ in 0..2 {
        expect_error(create_from(&app, &forged, Some(attacker)).await, 401, "Unauthorized").await;
    }
    expect_rate_limited(create_from(&app, &forged, Some(attacker)).await).await;
    expect_rate_limited(create_from(&app, &valid, Some("198.51.100.7")).await).await;

    let response = create_from(&app, &valid, Some("198.51.100.8")).await;
    assert_eq!(response.status(), 200, "another client of the proxy is unaffected");
    app.stop().await;
}

#[tokio::test]
async fn without_trusted_proxies_a_forged_forwarded_for_does_not_escape_the_block() {
    let app = spawn_app_with(|s| s.limits.failed_auth_burst = 2).await;
    assert!(app.settings.limits.trusted_proxies.is_empty());
    let valid = app.token("p", "A");
    let forged = forged_token("p", "A");
    for i in 0..2 {
        let pretend = format!("192.0.2.{i}");
        expect_error(create_from(&app, &forged, Some(&pretend)).await, 401, "Unauthorized").await;
    }
    expect_rate_limited(create_from(&app, &forged, Some("192.0.2.99")).await).await;
    expect_rate_limited(create_from(&app, &valid, Some("198.51.100.8")).await).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_limits_off_serves_a_burst_of_200_creates_that_would_otherwise_be_limited() {
    async fn statuses(app: &TestApp) -> Vec<u16> {
        app.put_offer("p", "S1", 1000, &[]).await;
        let token = app.token("p", "A");
        let mut all = Vec::new();
        // Four waves of 50 at once: a burst, within bounds for the test client.
        for _ in 0..4 {
            all.extend(
                creates_at_once(app, &token, "S1", 50)
                    .await
                    .into_iter()
                    .map(|a| a.status),
            );
        }
        all
    }
    let limited = spawn_app_with(|_| {}).await;
    assert!(
        statuses(&limited).await.contains(&429),
        "with the defaults, the burst is limited"
    );
    limited.stop().await;

    let app = spawn_app_with(|s| s.limits.enabled = false).await;
    let got = statuses(&app).await;
    assert_eq!(got.iter().filter(|s| **s == 200).count(), 200, "{got:?}");
    // Failed authentications are not limited either.
    let forged = forged_token("p", "A");
    for _ in 0..30 {
        expect_error(create_from(&app, &forged, None).await, 401, "Unauthorized").await;
    }
    app.stop().await;
}

// ---------------------------------------------------------------------------
// The WebSocket message budget

/// A small message budget, refilled quickly (one per ping_interval / 4), and PINGs
/// often enough that a good player answers many of them in a few seconds.
fn quick_pings(s: &mut Settings) {
    s.liveness.ping_interval = Duration::from_millis(100);
    s.websocket.message_burst = 5;
}

/// Sends `frame` `n` times as fast as it can, then reads until the socket closes
/// (answering nothing); the close code it saw.
async fn flood(player: &mut Player, n: usize, frame: impl Fn() -> Message) -> Option<u16> {
    for _ in 0..n {
        player.send_raw(frame()).await;
    }
    for _ in 0..1000 {
        match player.next().await {
            Seen::Closed(code) => return code,
            Seen::Message(_) => {}
        }
    }
    panic!("the flooding socket was never closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_flooding_pongs_or_pings_is_closed_with_1008_and_counted_while_a_player_answering_every_ping_is_not() {
    let app = spawn_app_with(quick_pings).await;
    app.put_offer("p", "S1", 10, &[]).await;
    let token = app.token("p", "A");
    let (_, mut good) = live_player(&app, &token, "S1", "TV").await;
    let (_, mut pongs) = live_player(&app, &token, "S1", "Phone").await;
    let (_, mut pings) = live_player(&app, &token, "S1", "Laptop").await;
    assert_eq!(app.health().await["floodedSockets"], 0);

    let pong = || Message::Text(json!({"action": "PONG"}).to_string().into());
    let ping = || Message::Ping(vec![1, 2, 3].into());
    let (answered, pong_close, ping_close) = tokio::join!(
        good.keep_alive_for(Duration::from_secs(3)),
        flood(&mut pongs, 200, pong),
        flood(&mut pings, 200, ping),
    );
    assert_eq!(pong_close, Some(1008), "valid PONGs past the budget");
    assert_eq!(ping_close, Some(1008), "protocol pings past the budget");
    assert!(answered >= 10, "the good player kept answering PINGs ({answered})");
    assert_eq!(app.health().await["floodedSockets"], 2);

    // Still held and served after the floods.
    good.send("FINISHED").await;
    good.expect_close(1000).await;
    app.stop().await;
}

// ---------------------------------------------------------------------------
// The real binary

#[tokio::test]
async fn the_real_binary_reads_trusted_proxies_from_the_environment_and_logs_the_blocked_address_not_the_token() {
    use crate::support_process::{ProcessOptions, ServerProcess};
    let dir = tempfile::tempdir().unwrap();
    let options = ProcessOptions::default()
        .env("DRISC__LIMITS__TRUSTED_PROXIES", "10.0.0.0/8,127.0.0.1")
        .env("DRISC__LIMITS__FAILED_AUTH_BURST", "2");
    let server = ServerProcess::start(dir.path(), options);
    let http = reqwest::Client::new();
    let create = |token: String, forwarded_for: &'static str| {
        http.post(server.url("/sessions"))
            .bearer_auth(token)
            .header("x-forwarded-for", forwarded_for)
            .body(json!({"offerId": "S1"}).to_string())
            .send()
    };
    let forged = forged_token("p", "A");
    let valid = customer_token("p", "A");
    for _ in 0..2 {
        expect_error(
            create(forged.clone(), "198.51.100.7").await.unwrap(),
            401,
            "Unauthorized",
        )
        .await;
    }
    expect_rate_limited(create(forged.clone(), "198.51.100.7").await.unwrap()).await;
    // The second entry of the list is trusted too: the forwarded address is the source.
    assert_eq!(create(valid.clone(), "198.51.100.8").await.unwrap().status(), 200);

    let blocked = |l: &String| l.contains("too many failed authentications") && l.contains("198.51.100.7");
    let log = server.output_once(|log| log.iter().any(blocked)).await;
    assert!(
        log.iter().any(blocked),
        "the blocked address is logged:\n{}",
        log.join("\n")
    );
    assert!(
        log.iter().all(|l| !l.contains(&forged) && !l.contains(&valid)),
        "no token is logged"
    );

    // Many addresses blocked at once (a botnet): a line per 10 s with the
    // count, not one per address, and the counts add up.
    const MORE: u64 = 50;
    for n in 0..MORE {
        let address = format!("198.51.100.{}", 100 + n);
        for _ in 0..3 {
            http.post(server.url("/sessions"))
                .bearer_auth(&forged)
                .header("x-forwarded-for", &address)
                .body(json!({"offerId": "S1"}).to_string())
                .send()
                .await
                .unwrap();
        }
    }
    server
        .await_throttled_total(
            |l| l.contains("too many failed authentications"),
            "addresses",
            MORE + 1,
            3,
        )
        .await;
}
