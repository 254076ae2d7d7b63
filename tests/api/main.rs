//! Integration tests: the real server on port 0, real HTTP and WebSocket clients.
//! One binary with modules, so the suite links once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin_publishers;
mod auth;
mod bad_requests;
mod cluster;
mod conformance;
mod connections;
mod cors;
mod crash_safety;
mod events_stream;
mod fuzz;
mod helpers;
mod limit_conformance;
mod limit_policies;
mod me_sessions;
mod metrics;
mod offers;
mod openapi;
mod outbox_conformance;
mod overrides;
mod players;
mod pools;
mod rate_limits;
mod readiness;
mod redis_cluster;
mod redis_failover;
mod redis_moved;
mod redis_slots;
mod session_admin;
mod sessions;
mod settings_conformance;
mod settings_postgres;
mod store_slow;
mod store_stall;
mod store_tls;
mod support_postgres;
// A toolbox for the tests that need a real process: not every test uses every tool.
#[allow(dead_code)]
mod support_process;
mod support_proxy;
mod support_redis;
mod takeover;
mod tokens;
mod web;
mod webhooks;
mod websocket;

#[tokio::test]
async fn smoke_create_request_ok() {
    let app = helpers::spawn_app().await;
    let token = app.token("1", 42);
    let (_, mut player) = players::live_player(&app, &token, "S1", "TV").await;
    player.send("FINISHED").await;
    player.expect_close(1000).await;
    app.stop().await;
}
