//! Liveness and readiness as load balancers and orchestrators see them: `/readyz`
//! follows the stores the node needs (real Redis, real PostgreSQL, stopped and
//! started again) and turns 503 the moment the node is asked to stop, while the
//! node keeps serving for `server.drain_period`; `drisc healthcheck` turns it into
//! an exit code; `drisc check-config` prints the settings as TOML without secrets.

use std::time::Duration;

use drisc::config::{SessionBackend, SettingsBackend};
use drisc::domain::control::UnavailablePolicy;
use serde_json::{Value, json};

use crate::helpers::{self, TestApp, customer_token, spawn_app_with};
use crate::players::{Seen, live_player};
use crate::support_postgres::PgServer;
use crate::support_process::{ProcessOptions, ServerProcess};
use crate::support_redis::RedisServer;

/// Longer than helpers::PATIENCE: a store's client reconnects with its own back-off.
const STORE_PATIENCE: Duration = Duration::from_secs(15);

async fn get(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = http.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url} answered non-JSON ({e}): {text}"));
    (status, body)
}

pub(crate) async fn readyz(app: &TestApp) -> (u16, Value) {
    get(&app.http, &app.url("/readyz")).await
}

/// Polls `/readyz` until it answers `status`, for at most STORE_PATIENCE; returns the body.
async fn until_readyz(app: &TestApp, status: u16) -> Value {
    until_readyz_within(app, status, STORE_PATIENCE).await
}

/// Polls `/readyz` every 100 ms until it answers `status`, for at most `patience`;
/// returns the body.
pub(crate) async fn until_readyz_within(app: &TestApp, status: u16, patience: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let (got, body) = readyz(app).await;
        if got == status {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz still answers {got} {body} after {patience:?}, not {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn node_on(redis: &RedisServer, on_unavailable: UnavailablePolicy) -> TestApp {
    let url = redis.url.clone();
    spawn_app_with(move |s| {
        s.storage.sessions = SessionBackend::Redis;
        s.storage.redis_url = url;
        s.cluster.on_store_unavailable = on_unavailable;
    })
    .await
}

#[tokio::test]
async fn readyz_turns_503_naming_redis_while_redis_is_down_and_200_once_it_is_back() {
    let mut redis = RedisServer::start();
    let app = node_on(&redis, UnavailablePolicy::Refuse).await;
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["redis"], "up", "{body}");

    redis.kill();
    let body = until_readyz(&app, 503).await;
    assert_eq!(body["status"], "unavailable", "{body}");
    assert!(body["reason"].as_str().unwrap().contains("redis"), "{body}");
    assert_eq!(body["checks"]["redis"], "down", "{body}");
    assert_eq!(body["checks"]["sqlite"], "up", "{body}");
    // The process itself is fine: restarting it would not bring Redis back.
    let (status, body) = get(&app.http, &app.url("/livez")).await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));

    redis.restart_empty();
    let body = until_readyz(&app, 200).await;
    assert_eq!(body["status"], "ready", "{body}");
    assert_eq!(body["checks"]["redis"], "up", "{body}");
    app.stop().await;
}

#[tokio::test]
async fn with_fail_open_a_redis_outage_shows_in_the_checks_but_the_node_stays_ready() {
    let mut redis = RedisServer::start();
    let app = node_on(&redis, UnavailablePolicy::FailOpen).await;
    redis.kill();
    // Creates answer "disabled" meanwhile: taking every node out would stop playback.
    let deadline = tokio::time::Instant::now() + STORE_PATIENCE;
    loop {
        let (status, body) = readyz(&app).await;
        assert_eq!(status, 200, "{body}");
        if body["checks"]["redis"] == "down" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "redis never shown down: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    redis.restart_empty();
    app.stop().await;
}

#[tokio::test]
async fn readyz_turns_503_naming_postgres_while_the_settings_database_is_down() {
    let mut pg = PgServer::start().await;
    let url = pg.url.clone();
    let app = spawn_app_with(move |s| {
        s.storage.settings = SettingsBackend::Postgres;
        s.storage.postgres_url = url;
    })
    .await;
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["postgres"], "up", "{body}");

    pg.stop();
    let body = until_readyz(&app, 503).await;
    assert!(body["reason"].as_str().unwrap().contains("postgres"), "{body}");
    assert_eq!(body["checks"]["postgres"], "down", "{body}");

    pg.start_again();
    until_readyz(&app, 200).await;
    app.stop().await;
}

/// The real binary with a drain period, and nothing else in the way.
fn draining_server(dir: &std::path::Path, drain_period: &str, options: ProcessOptions) -> ServerProcess {
    ServerProcess::start(dir, options.env("DRISC__SERVER__DRAIN_PERIOD", drain_period))
}

/// Polls the server's `/readyz` until it answers 503, for at most PATIENCE (the
/// signal is delivered asynchronously); returns the body.
async fn until_draining(http: &reqwest::Client, server: &ServerProcess) -> Value {
    let deadline = tokio::time::Instant::now() + helpers::PATIENCE;
    loop {
        let (status, body) = get(http, &server.url("/readyz")).await;
        if status == 503 {
            return body;
        }
        assert_eq!(status, 200, "{body}");
        assert!(tokio::time::Instant::now() < deadline, "/readyz never turned 503");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn after_sigterm_readyz_says_draining_while_sockets_and_creates_go_on_then_sockets_get_1012_and_it_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    // Quick PINGs: the held socket is shown to be pinged while the node drains.
    let quick_pings = ProcessOptions::default()
        .env("DRISC__LIVENESS__PING_INTERVAL", "200ms")
        .env("DRISC__LIVENESS__PONG_TIMEOUT", "5s");
    let mut server = draining_server(dir.path(), "2s", quick_pings);
    let api = server.api();
    let http = api.http.clone();
    let (status, body) = get(&http, &server.url("/readyz")).await;
    assert_eq!((status, &body["status"]), (200, &json!("ready")), "{body}");
    let (_, doc) = get(&http, &server.url("/openapi.json")).await;
    let (_, mut player) = live_player(&api, &customer_token("p", "viewer"), "S1", "TV").await;

    server.signal("TERM");
    let body = until_draining(&http, &server).await;
    assert_eq!(body["status"], "unavailable", "{body}");
    assert_eq!(body["reason"], "draining", "{body}");
    // As the OpenAPI document describes a 503 of /readyz, bytes and all.
    let answer = http.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(answer.status(), 503);
    assert_eq!(answer.headers()["cache-control"], "no-store");
    let text = answer.text().await.unwrap();
    crate::openapi::assert_matches(&doc, "/readyz", "get", 503, &text);

    // Draining, not stopped: the held socket is pinged and its PONG taken, and a
    // new player (the load balancer has not noticed yet) still gets a session.
    player.expect("PING").await;
    player.send("PONG").await;
    let (_, mut late_player) = live_player(&api, &customer_token("p", "latecomer"), "S1", "TV").await;
    let (status, _) = get(&http, &server.url("/livez")).await;
    assert_eq!(status, 200);

    // Then the shutdown of old: every socket closes with 1012 (service restart).
    for player in [&mut player, &mut late_player] {
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match player.next().await {
                    Seen::Message(m) if m["action"] == "PING" => player.send("PONG").await,
                    other => return other,
                }
            }
        })
        .await
        .expect("the socket closes after the drain");
        assert_eq!(closed, Seen::Closed(Some(1012)));
    }
    let status = server
        .wait_exit(Duration::from_secs(15))
        .expect("drisc exits after the drain");
    assert!(status.success(), "{status}\n{}", server.output().join("\n"));
}

#[tokio::test]
async fn a_second_sigterm_skips_the_drain() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = draining_server(dir.path(), "300s", ProcessOptions::default());
    let http = reqwest::Client::new();
    server.signal("TERM");
    until_draining(&http, &server).await;
    server.signal("TERM");
    let status = server
        .wait_exit(Duration::from_secs(15))
        .expect("a second signal ends a 300 s drain");
    assert!(status.success(), "{status}");
}

/// Runs `drisc <args>` with `env`, returning whether it succeeded and what it printed.
async fn drisc(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_drisc"));
    command.args(args).env_remove("RUST_LOG").kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = tokio::time::timeout(Duration::from_secs(20), command.output())
        .await
        .expect("drisc answers in time")
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), printed)
}

#[tokio::test]
async fn drisc_healthcheck_exits_0_against_a_ready_server_and_non_zero_against_a_draining_or_absent_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = draining_server(dir.path(), "60s", ProcessOptions::default());
    let port = server.port.to_string();
    // The default URL comes from the configuration; a wildcard host is reached on loopback.
    let configured = [
        ("DRISC__SERVER__HOST", "0.0.0.0"),
        ("DRISC__SERVER__PORT", port.as_str()),
    ];
    let (ok, printed) = drisc(&["healthcheck"], &configured).await;
    assert!(ok, "{printed}");
    assert!(printed.contains("ready"), "{printed}");
    let url = server.url("/readyz");
    let (ok, printed) = drisc(&["healthcheck", "--url", &url], &[]).await;
    assert!(ok, "{printed}");

    server.signal("TERM");
    until_draining(&reqwest::Client::new(), &server).await;
    let (ok, printed) = drisc(&["healthcheck"], &configured).await;
    assert!(!ok, "a draining server is not healthy: {printed}");
    assert!(printed.contains("503") && printed.contains("draining"), "{printed}");

    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(15)).expect("drisc exits");
    assert!(status.success(), "{status}");
    let (ok, printed) = drisc(&["healthcheck", "--url", &url], &[]).await;
    assert!(!ok, "nothing listens any more: {printed}");
}

#[tokio::test]
async fn drisc_check_config_prints_toml_that_parses_and_holds_no_secret() {
    let env = [
        ("DRISC__AUTH__CUSTOMER_KEY", "customer-s3cret"),
        ("DRISC__AUTH__ADMIN_KEY", "admin-s3cret"),
        ("DRISC__AUTH__SESSION_SECRET", "session-s3cret"),
        ("DRISC__STORAGE__REDIS_URL", "redis://:redis-s3cret@127.0.0.1:6379/"),
        (
            "DRISC__STORAGE__POSTGRES_URL",
            "postgres://drisc:pg-s3cret@127.0.0.1/drisc?password=query-s3cret",
        ),
        ("DRISC__SERVER__DRAIN_PERIOD", "5s"),
    ];
    let (ok, printed) = drisc(&["check-config"], &env).await;
    assert!(ok, "{printed}");
    assert!(!printed.contains("s3cret"), "{printed}");
    let table: toml::Table = toml::from_str(&printed).unwrap_or_else(|e| panic!("not TOML ({e}):\n{printed}"));
    assert_eq!(table["server"]["drain_period"].as_str(), Some("5s"));
    assert_eq!(table["auth"]["admin_key"].as_str(), Some(drisc::config::REDACTED));
    assert_eq!(
        table["storage"]["redis_url"].as_str(),
        Some("redis://:REDACTED@127.0.0.1:6379/")
    );
    for section in [
        "server",
        "storage",
        "cluster",
        "auth",
        "liveness",
        "publishers",
        "websocket",
        "limits",
        "cors",
        "log",
    ] {
        assert!(table.contains_key(section), "no [{section}]:\n{printed}");
    }
}
