//! The WebSocket: messages, lifecycle, reconnects, restarts, bad frames.
//!
//! Every message a [`Player`] reads is checked against the protocol's vocabulary
//! (the five server actions, with exactly their keys), here as in every module.

use std::time::Duration;

use drisc::Settings;
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::helpers::{self, TestApp};
use crate::players::{
    Player, SERVER_ACTIONS, Seen, assert_protocol_message, connect_expired, connect_ok, endpoint_on, live_player,
};

// ---------------------------------------------------------------------------
// Timings

/// Short liveness timings, for the tests about liveness.
fn fast(s: &mut Settings) {
    s.liveness.ping_interval = Duration::from_millis(300);
    s.liveness.pong_timeout = Duration::from_secs(1);
    s.liveness.reconnect_grace = Duration::from_secs(1);
    s.liveness.connect_timeout = Duration::from_secs(1);
    s.liveness.sweep_interval = Duration::from_millis(100);
}

/// Timings that never interfere with a test that is not about them: no PING,
/// no timeout within a test's lifetime.
fn calm(s: &mut Settings) {
    s.liveness.ping_interval = Duration::from_secs(20);
    s.liveness.pong_timeout = Duration::from_secs(60);
    s.liveness.reconnect_grace = Duration::from_secs(60);
    s.liveness.connect_timeout = Duration::from_secs(60);
    s.liveness.sweep_interval = Duration::from_millis(100);
}

// ---------------------------------------------------------------------------
// What the server says about a session

/// The HTTP status of a `POST /sessions` for `offer`.
async fn create_status(app: &TestApp, token: &str, offer: &str) -> StatusCode {
    app.create(token, json!({"offerId": offer, "sessionName": "probe"}))
        .await
        .status()
}

/// Polls `POST /sessions` until it is granted; returns how long that took. Polling
/// this fast soon meets the customer's rate limit: it then waits as told, like a
/// good client.
async fn create_once_free(app: &TestApp, token: &str, offer: &str, patience: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let response = app
            .create(token, json!({"offerId": offer, "sessionName": "probe"}))
            .await;
        let mut pause = Duration::from_millis(25);
        match response.status() {
            StatusCode::OK => return start.elapsed(),
            StatusCode::CONFLICT => {}
            StatusCode::TOO_MANY_REQUESTS => {
                let secs = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                pause = Duration::from_secs(secs);
            }
            other => panic!("unexpected status {other} while waiting for a free slot"),
        }
        assert!(start.elapsed() < patience, "the slot was not freed within {patience:?}");
        tokio::time::sleep(pause).await;
    }
}

async fn bad_messages(app: &TestApp) -> u64 {
    app.health().await["badMessages"].as_u64().expect("badMessages")
}

/// The status the upgrade of `url` is refused with; fails if the socket opens.
async fn refused_status(url: &str) -> u16 {
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => panic!("the upgrade of {url} was accepted"),
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("the upgrade of {url} failed without an HTTP answer: {other}"),
    }
}

/// `endpoint` with one character of its token's signature changed.
fn with_bad_signature(endpoint: &str) -> String {
    let (base, token) = endpoint.split_once("?token=").expect("endpoint has ?token=");
    let (signed, signature) = token.rsplit_once('.').expect("a JWT");
    // Change the first character: the last one may only carry padding bits.
    let mut chars: Vec<char> = signature.chars().collect();
    chars[0] = if chars[0] == 'A' { 'B' } else { 'A' };
    let signature: String = chars.into_iter().collect();
    format!("{base}?token={signed}.{signature}")
}

// ---------------------------------------------------------------------------
// REQUESTED, OK and the vocabulary

#[tokio::test]
async fn requested_is_answered_with_exactly_ok_and_nothing_else() {
    let app = helpers::spawn_app_with(calm).await;
    let token = app.token("p", "c");
    let granted = app.create_ok(&token, "S1", "TV").await;
    let mut player = Player::connect(&granted.endpoint).await;
    player.send("REQUESTED").await;
    assert_eq!(player.next().await, Seen::Message(json!({"action": "OK"})));
    player.expect_silence(Duration::from_millis(400)).await;
}

#[tokio::test]
async fn requested_repeated_on_the_same_socket_is_answered_ok_again() {
    let app = helpers::spawn_app_with(calm).await;
    let token = app.token("p", "c");
    let (_, mut player) = live_player(&app, &token, "S1", "TV").await;
    for _ in 0..2 {
        player.send("REQUESTED").await;
        assert_eq!(player.next().await, Seen::Message(json!({"action": "OK"})));
    }
    player.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn pong_before_requested_is_ignored_and_a_later_requested_gets_ok() {
    let app = helpers::spawn_app_with(calm).await;
    let token = app.token("p", "c");
    let granted = app.create_ok(&token, "S1", "TV").await;
    let mut player = Player::connect(&granted.endpoint).await;
    player.send("PONG").await;
    player.expect_silence(Duration::from_millis(400)).await;
    player.request_ok().await;
}

#[tokio::test]
async fn the_server_only_ever_sends_the_five_protocol_actions() {
    let app = helpers::spawn_app_with(calm).await;
    app.put_offer("p", "S2", 2, &[]).await;
    let token = app.token("p", "c");

    // OK, and PING when another session of the pool is created.
    let (a, mut tv) = live_player(&app, &token, "S2", "TV").await;
    let b = app.create_ok(&token, "S2", "Phone").await;
    tv.expect("PING").await;
    tv.send("PONG").await;
    let mut phone = connect_ok(&b.endpoint).await;
    // TERMINATE: the same session from a newer socket.
    let mut phone_again = connect_ok(&b.endpoint).await;
    phone.expect("TERMINATE").await;
    phone.expect_close(4002).await;
    // TAKE_OVER, then EXPIRED for the old endpoint.
    let c = helpers::granted(app.takeover(&token, "S2", "Laptop", &a.session_id).await).await;
    tv.expect("TAKE_OVER").await;
    tv.expect_close(4001).await;
    connect_expired(&a.endpoint).await;
    // EXPIRED on an admin kick.
    let kicked = app
        .admin(Method::DELETE, &format!("/sessions/{}", b.session_id), None)
        .await;
    assert_eq!(kicked.status(), StatusCode::NO_CONTENT);
    // The takeover created a session in the pool: the other live one was pinged.
    phone_again.expect("PING").await;
    phone_again.expect("EXPIRED").await;
    phone_again.expect_close(4003).await;
    let mut laptop = connect_ok(&c.endpoint).await;
    laptop.send("FINISHED").await;
    laptop.expect_close(1000).await;

    // Every player of the lifecycle, and what each saw.
    let seen: Vec<_> = [&tv, &phone, &phone_again, &laptop]
        .iter()
        .flat_map(|p| p.seen().iter().cloned())
        .collect();
    for m in &seen {
        assert_protocol_message(m);
    }
    let mut actions: Vec<&str> = seen.iter().filter_map(|m| m["action"].as_str()).collect();
    actions.sort_unstable();
    actions.dedup();
    let mut all = SERVER_ACTIONS.to_vec();
    all.sort_unstable();
    assert_eq!(actions, all, "the lifecycle should have shown every action: {seen:?}");
}

// ---------------------------------------------------------------------------
// PING and PONG

#[tokio::test]
async fn creating_a_session_pings_the_other_live_sessions_of_its_pool() {
    let app = helpers::spawn_app_with(calm).await;
    app.put_offer("p", "S2", 2, &[]).await;
    let token = app.token("p", "c");
    let (_, mut tv) = live_player(&app, &token, "S2", "TV").await;
    // A live session of another pool of the same customer.
    let (_, mut other_pool) = live_player(&app, &token, "S9", "Radio").await;
    tv.expect_silence(Duration::from_millis(200)).await;

    let start = Instant::now();
    app.create_ok(&token, "S2", "Phone").await;
    tv.expect("PING").await;
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "the PING came after {:?}, as if it were the periodic one",
        start.elapsed()
    );
    other_pool.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn live_sessions_are_pinged_every_ping_interval() {
    let app = helpers::spawn_app_with(|s| {
        fast(s);
        s.liveness.pong_timeout = Duration::from_secs(3);
    })
    .await;
    let token = app.token("p", "c");
    let (_, mut player) = live_player(&app, &token, "S1", "TV").await;
    // Not at once: the first PING comes one interval (300 ms) after OK.
    player.expect_silence(Duration::from_millis(100)).await;
    // 3 s is ten intervals: at least a few PINGs, and nowhere near a flood.
    let pings = player.keep_alive_for(Duration::from_secs(3)).await;
    assert!((3..=14).contains(&pings), "{pings} PINGs in 3 s at a 300 ms interval");
}

#[tokio::test]
async fn answering_pong_keeps_a_session_alive_well_past_the_pong_timeout() {
    let app = helpers::spawn_app_with(fast).await;
    let token = app.token("p", "c");
    let (granted, mut player) = live_player(&app, &token, "S1", "TV").await;
    // Three pong timeouts.
    let pings = player.keep_alive_for(Duration::from_secs(3)).await;
    assert!(pings >= 2, "only {pings} PINGs in 3 s");
    assert_eq!(app.session_state(&granted.session_id).await.as_deref(), Some("live"));
    assert_eq!(create_status(&app, &token, "S1").await, StatusCode::CONFLICT);
    player.send("FINISHED").await;
    assert_eq!(player.next_skipping_pings(true).await, Seen::Closed(Some(1000)));
}

#[tokio::test]
async fn a_player_that_stops_answering_pong_is_expired_and_its_slot_freed() {
    let app = helpers::spawn_app_with(fast).await;
    let token = app.token("p", "c");
    let (_, mut player) = live_player(&app, &token, "S1", "TV").await;
    let start = Instant::now();
    // Never answers: PINGs, then EXPIRED and close 4003.
    assert_eq!(
        player.next_skipping_pings(false).await,
        Seen::Message(json!({"action": "EXPIRED"}))
    );
    let expired_after = start.elapsed();
    player.expect_close(4003).await;
    assert_eq!(create_status(&app, &token, "S1").await, StatusCode::OK);
    let freed_after = start.elapsed();
    assert!(
        expired_after >= Duration::from_millis(500),
        "expired after {expired_after:?}, well before the 1 s pong timeout"
    );
    assert!(
        freed_after < Duration::from_secs(5),
        "the slot was freed {freed_after:?} after the last sign of life (pong timeout 1 s)"
    );
}

// ---------------------------------------------------------------------------
// Pending, detached and finished sessions

#[tokio::test]
async fn a_granted_session_never_connected_stops_counting_after_the_connect_timeout() {
    let app = helpers::spawn_app_with(fast).await;
    let token = app.token("p", "c");
    let start = Instant::now();
    let pending = app.create_ok(&token, "S1", "TV").await;
    assert_eq!(create_status(&app, &token, "S1").await, StatusCode::CONFLICT);
    let freed_after = start.elapsed() + create_once_free(&app, &token, "S1", Duration::from_secs(6)).await;
    assert!(
        freed_after >= Duration::from_millis(900),
        "freed after {freed_after:?}, before the 1 s connect timeout"
    );
    // Its player, coming too late, is told its session is gone.
    connect_expired(&pending.endpoint).await;
}

#[tokio::test]
async fn a_socket_closed_without_finished_detaches_and_a_reconnect_within_the_grace_gets_ok() {
    let app = helpers::spawn_app_with(|s| {
        calm(s);
        s.liveness.reconnect_grace = Duration::from_secs(5);
    })
    .await;
    let token = app.token("p", "c");
    let (granted, player) = live_player(&app, &token, "S1", "TV").await;
    player.close().await;
    let id = granted.session_id.clone();
    helpers::eventually("the session is detached", || async {
        app.session_state(&id).await.as_deref() == Some("detached")
    })
    .await;
    assert_eq!(create_status(&app, &token, "S1").await, StatusCode::CONFLICT);
    // Straight to the cached endpoint, no new POST /sessions.
    let _player = connect_ok(&granted.endpoint).await;
    assert_eq!(app.session_state(&id).await.as_deref(), Some("live"));
}

#[tokio::test]
async fn a_detached_session_expires_after_the_reconnect_grace_and_frees_its_slot() {
    let app = helpers::spawn_app_with(|s| {
        calm(s);
        s.liveness.reconnect_grace = Duration::from_secs(1);
    })
    .await;
    let token = app.token("p", "c");
    let (granted, player) = live_player(&app, &token, "S1", "TV").await;
    let start = Instant::now();
    player.close().await;
    assert_eq!(create_status(&app, &token, "S1").await, StatusCode::CONFLICT);
    let freed_after = start.elapsed() + create_once_free(&app, &token, "S1", Duration::from_secs(6)).await;
    assert!(
        freed_after >= Duration::from_millis(900),
        "freed after {freed_after:?}, before the 1 s reconnect grace"
    );
    connect_expired(&granted.endpoint).await;
}

#[tokio::test]
async fn finished_closes_with_1000_frees_the_slot_at_once_and_the_endpoint_then_expires() {
    let app = helpers::spawn_app_with(calm).await;
    let token = app.token("p", "c");
    let (granted, mut player) = live_player(&app, &token, "S1", "TV").await;
    player.send("FINISHED").await;
    player.expect_close(1000).await;
    // No waiting: the slot is free the moment the close arrives.
    assert_eq!(create_status(&app, &token, "S1").await, StatusCode::OK);
    assert_eq!(app.session_state(&granted.session_id).await, None);
    connect_expired(&granted.endpoint).await;
}

// ---------------------------------------------------------------------------
// One socket per session, takeover, kick

#[tokio::test]
async fn a_second_socket_for_a_session_terminates_the_first() {
    let app = helpers::spawn_app_with(calm).await;
    let token = app.token("p", "c");
    let (granted, mut first) = live_player(&app, &token, "S1", "TV").await;
    let mut second = Player::connect(&granted.endpoint).await;
    second.send("REQUESTED").await;
    assert_eq!(second.next().await, Seen::Message(json!({"action": "OK"})));
    assert_eq!(first.next().await, Seen::Message(json!({"action": "TERMINATE"})));
    first.expect_close(4002).await;
    second.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn the_terminated_socket_closing_does_not_detach_or_end_the_session() {
    let app = helpers::spawn_app_with(|s| {
        fast(s);
        s.liveness.pong_timeout = Duration::from_millis(1500);
    })
    .await;
    let token = app.token("p", "c");
    let (granted, first) = live_player(&app, &token, "S1", "TV").await;
    let mut second = connect_ok(&granted.endpoint).await;
    // The first socket goes away (close frame, no FINISHED) after being replaced.
    first.close().await;
    assert_eq!(app.session_state(&granted.session_id).await.as_deref(), Some("live"));
    // The second socket keeps the session alive with its PONGs, past two pong timeouts.
    let pings = second.keep_alive_for(Duration::from_secs(3)).await;
    assert!(pings >= 2, "only {pings} PINGs in 3 s");
    assert_eq!(app.session_state(&granted.session_id).await.as_deref(), Some("live"));
    assert_eq!(create_status(&app, &token, "S1").await, StatusCode::CONFLICT);
}

#[tokio::test]
async fn takeover_sends_the_new_name_closes_the_victim_with_4001_and_expires_its_endpoint() {
    let app = helpers::spawn_app_with(calm).await;
    let token = app.token("p", "c");
    let (victim, mut tv) = live_player(&app, &token, "S1", "Living room TV").await;
    let response = app
        .takeover(&token, "S1", "Phone - Match of the day", &victim.session_id)
        .await;
    let new = helpers::granted(response).await;
    assert_eq!(
        tv.next().await,
        Seen::Message(json!({"action": "TAKE_OVER", "sessionName": "Phone - Match of the day"}))
    );
    tv.expect_close(4001).await;
    connect_expired(&victim.endpoint).await;
    let _phone = connect_ok(&new.endpoint).await;
}

#[tokio::test]
async fn an_admin_kick_expires_the_player_and_closes_it_with_4003() {
    let app = helpers::spawn_app_with(calm).await;
    let token = app.token("p", "c");
    let (granted, mut player) = live_player(&app, &token, "S1", "TV").await;
    let response = app
        .admin(Method::DELETE, &format!("/sessions/{}", granted.session_id), None)
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(player.next().await, Seen::Message(json!({"action": "EXPIRED"})));
    player.expect_close(4003).await;
    assert_eq!(create_status(&app, &token, "S1").await, StatusCode::OK);
}

// ---------------------------------------------------------------------------
// Restart

#[tokio::test]
async fn a_restart_closes_sockets_with_1012_and_the_cached_endpoint_then_gets_ok() {
    let app = helpers::spawn_app_with(calm).await;
    let token = app.token("p", "c");
    let (granted, mut player) = live_player(&app, &token, "S1", "TV").await;
    let port = app.port;
    let (app, seen) = tokio::join!(app.restart(), player.next());
    assert_eq!(seen, Seen::Closed(Some(1012)));
    assert_eq!(app.port, port);
    // The restored session still holds the pool's only slot...
    assert_eq!(create_status(&app, &token, "S1").await, StatusCode::CONFLICT);
    assert_eq!(
        app.session_state(&granted.session_id).await.as_deref(),
        Some("detached")
    );
    // ...and its player gets it back with the endpoint it cached.
    let mut player = connect_ok(&granted.endpoint).await;
    assert_eq!(create_status(&app, &token, "S1").await, StatusCode::CONFLICT);
    player.send("FINISHED").await;
    player.expect_close(1000).await;
}

#[tokio::test]
async fn a_restored_session_whose_player_never_returns_is_reaped_after_the_grace() {
    let app = helpers::spawn_app_with(|s| {
        calm(s);
        s.liveness.reconnect_grace = Duration::from_millis(1500);
    })
    .await;
    let token = app.token("p", "c");
    let (granted, mut player) = live_player(&app, &token, "S1", "TV").await;
    let (app, seen) = tokio::join!(app.restart(), player.next());
    assert_eq!(seen, Seen::Closed(Some(1012)));
    let start = Instant::now();
    assert_eq!(create_status(&app, &token, "S1").await, StatusCode::CONFLICT);
    let freed_after = start.elapsed() + create_once_free(&app, &token, "S1", Duration::from_secs(7)).await;
    assert!(
        freed_after < Duration::from_millis(1500) + Duration::from_secs(5),
        "freed {freed_after:?} after the restart"
    );
    connect_expired(&granted.endpoint).await;
}

#[tokio::test]
async fn a_session_token_from_before_a_restart_still_verifies() {
    let app = helpers::spawn_app_with(calm).await;
    let token = app.token("p", "c");
    let (finished, mut player) = live_player(&app, &token, "S1", "TV").await;
    player.send("FINISHED").await;
    player.expect_close(1000).await;
    let pending = app.create_ok(&token, "S1", "Phone").await;
    let _app = app.restart().await;
    // Both tokens were signed by the server before the restart: neither is refused
    // at the upgrade; one names a session that is gone, the other one still held.
    connect_expired(&finished.endpoint).await;
    let _phone = connect_ok(&pending.endpoint).await;
    // A server with another data directory (another secret) refuses them.
    let other = helpers::spawn_app().await;
    let elsewhere = endpoint_on(&pending.endpoint, other.port);
    assert_eq!(refused_status(&elsewhere).await, 401);
}

#[tokio::test]
async fn a_session_already_dead_at_shutdown_is_not_brought_back_by_the_restart() {
    let app = helpers::spawn_app_with(|s| {
        calm(s);
        s.liveness.reconnect_grace = Duration::from_millis(800);
        // No sweep during the test: only the rules decide that the session is dead.
        s.liveness.sweep_interval = Duration::from_secs(3600);
    })
    .await;
    let token = app.token("p", "c");
    let (granted, player) = live_player(&app, &token, "S1", "TV").await;
    player.close().await;
    let id = granted.session_id.clone();
    helpers::eventually("the session is detached", || async {
        app.session_state(&id).await.as_deref() == Some("detached")
    })
    .await;
    // Well past the grace: the session has ended (PROTOCOL 2.2), swept or not.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let app = app.restart().await;
    // An ended session's token only ever gets EXPIRED, restart or not.
    connect_expired(&granted.endpoint).await;
    assert_eq!(create_status(&app, &token, "S1").await, StatusCode::OK);
}

// ---------------------------------------------------------------------------
// Session tokens at the upgrade

#[tokio::test]
async fn a_token_with_a_bad_signature_is_refused_at_the_upgrade_with_401() {
    let app = helpers::spawn_app_with(calm).await;
    let token = app.token("p", "c");
    let granted = app.create_ok(&token, "S1", "TV").await;
    assert_eq!(refused_status(&with_bad_signature(&granted.endpoint)).await, 401);
    // The untouched endpoint opens, so the refusal was the signature's doing.
    let _player = connect_ok(&granted.endpoint).await;
}

#[tokio::test]
async fn a_missing_or_malformed_token_is_refused_at_the_upgrade_with_401() {
    let app = helpers::spawn_app().await;
    let ws = format!("ws://127.0.0.1:{}/ws", app.port);
    assert_eq!(refused_status(&ws).await, 401);
    assert_eq!(refused_status(&format!("{ws}?token=")).await, 401);
    assert_eq!(refused_status(&format!("{ws}?token=not.a.jwt")).await, 401);
}

#[tokio::test]
async fn a_well_signed_token_for_an_unknown_session_gets_expired_and_4003() {
    let app = helpers::spawn_app_with(calm).await;
    let token = app.token("p", "c");
    let (granted, mut player) = live_player(&app, &token, "S1", "TV").await;
    player.send("FINISHED").await;
    player.expect_close(1000).await;
    // The socket opens (the token is ours), and REQUESTED is told the session is gone.
    connect_expired(&granted.endpoint).await;
}

#[tokio::test]
async fn a_well_signed_token_past_its_exp_gets_expired_even_for_a_held_session() {
    const SECRET: &str = "websocket-test-session-secret";
    let app = helpers::spawn_app_with(|s| {
        calm(s);
        s.auth.session_secret = SECRET.into();
    })
    .await;
    // Configured, so the session's pool (which the token names) is offer S1's.
    app.put_offer("p", "S1", 1, &[]).await;
    let token = app.token("p", "c");
    let granted = app.create_ok(&token, "S1", "TV").await;
    let mint = |exp: i64| {
        let claims = json!({"sid": granted.session_id, "pub": "p", "cus": "c", "off": "S1", "exp": exp});
        let session_token = helpers::sign_hs(SECRET, jsonwebtoken::Algorithm::HS256, claims);
        format!("ws://127.0.0.1:{}/ws?token={session_token}", app.port)
    };
    connect_expired(&mint(helpers::exp_in(-60))).await;
    // The same claims with an exp ahead are accepted: only exp made the difference.
    let _player = connect_ok(&mint(helpers::exp_in(600))).await;
}

// ---------------------------------------------------------------------------
// Bad input

#[tokio::test]
async fn a_binary_frame_closes_the_socket_with_1003() {
    let app = helpers::spawn_app_with(calm).await;
    let token = app.token("p", "c");
    let (_, mut player) = live_player(&app, &token, "S1", "TV").await;
    player
        .send_raw(Message::Binary(br#"{"action":"PONG"}"#.to_vec().into()))
        .await;
    player.expect_close(1003).await;
}

#[tokio::test]
async fn a_text_message_over_4096_bytes_closes_with_1009_and_the_server_stays_healthy() {
    let app = helpers::spawn_app_with(calm).await;
    let token = app.token("p", "c");
    let (_, mut player) = live_player(&app, &token, "S1", "TV").await;
    let big = json!({"action": "PONG", "pad": "x".repeat(5000)}).to_string();
    player.send_text(&big).await;
    player.expect_close(1009).await;
    assert_eq!(app.health().await["status"], "ok");
    let other = app.token("p", "someone-else");
    let (_, mut fresh) = live_player(&app, &other, "S1", "TV").await;
    fresh.send("FINISHED").await;
    fresh.expect_close(1000).await;
}

#[tokio::test]
async fn a_message_over_4096_bytes_in_small_fragments_closes_with_1009() {
    let app = helpers::spawn_app_with(calm).await;
    let token = app.token("p", "c");
    let (_, mut player) = live_player(&app, &token, "S1", "TV").await;
    // Three fragments of 2000 bytes: each frame is small, the message is not.
    let chunk = "x".repeat(2000);
    let frames = [
        Frame::message(chunk.clone(), OpCode::Data(Data::Text), false),
        Frame::message(chunk.clone(), OpCode::Data(Data::Continue), false),
        Frame::message(chunk, OpCode::Data(Data::Continue), true),
    ];
    for frame in frames {
        player.send_raw(Message::Frame(frame)).await;
    }
    player.expect_close(1009).await;
}

#[tokio::test]
async fn malformed_json_and_unknown_actions_are_ignored_and_counted() {
    let app = helpers::spawn_app_with(calm).await;
    let token = app.token("p", "c");
    let (_, mut player) = live_player(&app, &token, "S1", "TV").await;
    let before = bad_messages(&app).await;
    let bad = [
        "{not json",
        r#"{"action":"DANCE"}"#,
        r#"{"noAction":true}"#,
        "[1,2,3]",
        r#""REQUESTED""#,
    ];
    for text in bad {
        player.send_text(text).await;
    }
    player.expect_silence(Duration::from_millis(300)).await;
    player.request_ok().await;
    assert_eq!(bad_messages(&app).await, before + bad.len() as u64);
}

#[tokio::test]
async fn more_bad_messages_than_allowed_close_the_socket_with_1008() {
    let app = helpers::spawn_app_with(calm).await;
    assert_eq!(app.settings.websocket.max_bad_messages, 10);
    let token = app.token("p", "c");
    let (_, mut player) = live_player(&app, &token, "S1", "TV").await;
    for _ in 0..10 {
        player.send_text(r#"{"action":"DANCE"}"#).await;
    }
    // Ten are tolerated: the socket still works.
    player.request_ok().await;
    player.send_text("{not json").await;
    player.expect_close(1008).await;
}

#[tokio::test]
async fn an_abruptly_dropped_socket_detaches_its_session() {
    let app = helpers::spawn_app_with(calm).await;
    let token = app.token("p", "c");
    let (granted, player) = live_player(&app, &token, "S1", "TV").await;
    // TCP goes away without a close frame.
    drop(player);
    let id = granted.session_id.clone();
    helpers::eventually("the session is detached", || async {
        app.session_state(&id).await.as_deref() == Some("detached")
    })
    .await;
    assert_eq!(create_status(&app, &token, "S1").await, StatusCode::CONFLICT);
    let _player = connect_ok(&granted.endpoint).await;
    assert_eq!(app.session_state(&id).await.as_deref(), Some("live"));
}

#[tokio::test]
async fn a_socket_that_never_sends_requested_is_closed_after_the_connect_timeout() {
    let app = helpers::spawn_app_with(|s| s.liveness.connect_timeout = Duration::from_millis(500)).await;
    let token = app.token("idle", 1);
    let granted = app.create_ok(&token, "S1", "TV").await;
    let mut player = Player::connect(&granted.endpoint).await;
    assert_eq!(player.next().await, Seen::Closed(Some(1008)));
}
