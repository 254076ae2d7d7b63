//! Connection discipline and a shutdown that always completes (issue 8, items 1-2):
//! slow, idle, flooding and half-sent clients, against the in-process server where
//! that shows it, and against the real binary for signals and file limits.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{self, Api, customer_token, spawn_app_with};
use crate::players::{Player, Seen, connect_ok, endpoint_on, live_player};
use crate::support_process::{ProcessOptions, ServerProcess};

/// Slack for "within a deadline": the server is on loopback, but the machine is shared.
const MARGIN: Duration = Duration::from_secs(3);

/// A client with no pool: a kept-alive connection from an earlier step could be
/// closed by the server (idle, or shed) and would fail the next request.
fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn raw(port: u16) -> TcpStream {
    raw_connect(port).await.unwrap()
}

async fn raw_connect(port: u16) -> std::io::Result<TcpStream> {
    TcpStream::connect(("127.0.0.1", port)).await
}

/// Waits up to `within` for the server to close `stream` (EOF or reset); what it
/// sends first is ignored. Returns how long that took.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read_all)
        .await
        .ok()
        .map(|()| start.elapsed())
}

/// Reads one HTTP response (head and a Content-Length body) within `within`.
async fn read_response(stream: &mut TcpStream, within: Duration) -> Option<(u16, String, Value)> {
    let read = async {
        let mut data = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            data.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&data).into_owned();
            let Some((head, body)) = text.split_once("\r\n\r\n") else {
                continue;
            };
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(str::to_owned)
                })
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if body.len() < length {
                continue;
            }
            let status = head.split_whitespace().nth(1)?.parse().ok()?;
            let body = serde_json::from_str(&body[..length]).unwrap_or(Value::Null);
            return Some((status, head.to_owned(), body));
        }
    };
    tokio::time::timeout(within, read).await.ok().flatten()
}

/// A request in flight that will not finish by itself.
async fn half_sent_body(port: u16) -> TcpStream {
    helpers::half_sent_create(port, &customer_token("1", 7)).await
}

/// Creates a session on a real server process and holds it (REQUESTED, OK).
async fn hold_session(server: &ServerProcess, customer: u32) -> (String, Player) {
    let api = Api {
        http: fresh_client(),
        ..server.api()
    };
    let (granted, player) = live_player(&api, &customer_token("1", customer), "S1", "TV").await;
    (granted.endpoint, player)
}

/// After a restart on the same data directory, the cached endpoint gets OK again.
async fn session_is_back(data_dir: &std::path::Path, endpoint: &str) {
    let server = ServerProcess::start(data_dir, ProcessOptions::default());
    connect_ok(&endpoint_on(endpoint, server.port)).await;
}

#[tokio::test]
async fn sigterm_with_a_half_sent_request_head_open_still_exits_and_the_held_session_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let shutdown_timeout = Duration::from_secs(2);
    let mut server = ServerProcess::start(
        dir.path(),
        ProcessOptions::default().env("DRISC__SERVER__SHUTDOWN_TIMEOUT", "2s"),
    );
    let (endpoint, mut player) = hold_session(&server, 42).await;
    let mut half = raw(server.port).await;
    half.write_all(b"POST /sessions HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    server.signal("TERM");
    assert_eq!(player.next().await, Seen::Closed(Some(1012)));
    let status = server
        .wait_exit(shutdown_timeout + MARGIN)
        .unwrap_or_else(|| panic!("drisc still runs after SIGTERM:\n{}", server.output().join("\n")));
    assert!(status.success(), "{status}\n{}", server.output().join("\n"));
    let data_dir = server.data_dir.clone();
    drop(server);

    session_is_back(&data_dir, &endpoint).await;
}

#[tokio::test]
async fn a_second_sigterm_ends_the_wait_for_a_busy_connection_and_the_session_is_still_saved() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(
        dir.path(),
        ProcessOptions::default()
            .env("DRISC__SERVER__SHUTDOWN_TIMEOUT", "60s")
            .env("DRISC__SERVER__BODY_TIMEOUT", "120s"),
    );
    let (endpoint, mut player) = hold_session(&server, 42).await;
    let _busy = half_sent_body(server.port).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    server.signal("TERM");
    assert_eq!(player.next().await, Seen::Closed(Some(1012)));
    // The request in flight keeps the drain waiting...
    assert!(
        server.wait_exit(Duration::from_secs(1)).is_none(),
        "the drain should wait for the request in flight:\n{}",
        server.output().join("\n")
    );
    // ...until a second signal.
    server.signal("TERM");
    let status = server.wait_exit(MARGIN).unwrap_or_else(|| {
        panic!(
            "drisc still runs after a second SIGTERM:\n{}",
            server.output().join("\n")
        )
    });
    assert!(status.success(), "{status}\n{}", server.output().join("\n"));
    let data_dir = server.data_dir.clone();
    drop(server);

    session_is_back(&data_dir, &endpoint).await;
}

#[tokio::test]
async fn a_slowloris_request_head_is_closed_after_header_read_timeout() {
    let app = spawn_app_with(|s| s.server.header_read_timeout = Duration::from_secs(1)).await;
    let mut stream = raw(app.port).await;
    let start = Instant::now();
    let head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut closed = false;
    // One byte every 300 ms, for at most as many bytes as the head has (~20 s).
    for byte in head {
        if stream.write_all(&[*byte]).await.is_err()
            || closed_within(&mut stream, Duration::from_millis(300)).await.is_some()
        {
            closed = true;
            break;
        }
    }
    let elapsed = start.elapsed();
    assert!(closed, "the slow head was never closed");
    assert!(
        elapsed < Duration::from_secs(1) + MARGIN,
        "the slow head was closed after {elapsed:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn idle_connections_are_closed_after_idle_timeout_not_after_the_header_timeout() {
    let app = spawn_app_with(|s| {
        s.server.header_read_timeout = Duration::from_secs(1);
        s.server.idle_timeout = Duration::from_secs(3);
    })
    .await;
    // A kept-alive connection after one request, and one that never sent a byte.
    let mut kept = raw(app.port).await;
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, _, _) = read_response(&mut kept, MARGIN).await.expect("a response");
    assert_eq!(status, 200);
    let mut silent = raw(app.port).await;
    let start = Instant::now();

    // Past the header timeout, both are still open: idleness is not a slow head.
    assert_eq!(closed_within(&mut kept, Duration::from_secs(2)).await, None);
    assert_eq!(closed_within(&mut silent, Duration::from_millis(10)).await, None);
    // Both are closed once idle for idle_timeout.
    assert!(
        closed_within(&mut kept, Duration::from_secs(1) + MARGIN)
            .await
            .is_some()
    );
    assert!(closed_within(&mut silent, MARGIN).await.is_some());
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(2900), "closed too early: {elapsed:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_request_body_that_never_finishes_gets_408_after_body_timeout() {
    let app = spawn_app_with(|s| s.server.body_timeout = Duration::from_secs(1)).await;
    let start = Instant::now();
    let mut stream = half_sent_body(app.port).await;
    let (status, _, body) = read_response(&mut stream, Duration::from_secs(1) + MARGIN)
        .await
        .expect("an answer within body_timeout");
    assert_eq!(status, 408, "{body}");
    assert_eq!(body["code"], "RequestTimeout", "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(start.elapsed() >= Duration::from_millis(900));
    // The rest of the body is not waited for: the connection is closed.
    assert!(closed_within(&mut stream, MARGIN).await.is_some());
    app.stop().await;
}

#[tokio::test]
async fn a_request_head_larger_than_max_header_bytes_is_refused() {
    let app = spawn_app_with(|s| s.server.max_header_bytes = 4096).await;
    let mut stream = raw(app.port).await;
    let head = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(8192)
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let answer = read_response(&mut stream, MARGIN).await;
    assert!(
        matches!(answer, None | Some((431, _, _))),
        "a head over the limit must get 431 or be closed, got {answer:?}"
    );
    // A head within the limit is still served.
    let health = app.http.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn past_max_requests_in_flight_a_request_gets_503_with_retry_after() {
    let app = spawn_app_with(|s| {
        s.server.max_requests_in_flight = 1;
        s.server.body_timeout = Duration::from_secs(30);
    })
    .await;
    let held = half_sent_body(app.port).await;
    let client = fresh_client();
    let mut refused = None;
    // The held request reaches the server within moments: poll a bounded number of times.
    for _ in 0..100 {
        let response = client.get(app.url("/health")).send().await.unwrap();
        if response.status() == 503 {
            refused = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = refused.expect("a second request while one is in flight gets 503");
    assert_eq!(
        response.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    helpers::expect_error(response, 503, "ServiceUnavailable").await;

    // Once the held request is gone, requests are served again.
    drop(held);
    helpers::eventually("requests are served again", || async {
        client.get(app.url("/health")).send().await.unwrap().status() == 200
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_connection_flood_past_the_file_limit_leaves_room_for_new_and_held_players() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        ProcessOptions {
            nofile: Some(300),
            ..ProcessOptions::default()
        }
        .env("DRISC__SERVER__CONNECTION_RESERVE", "100")
        .env("DRISC__LIVENESS__PING_INTERVAL", "1s")
        // Long enough that the held player, which answers no PING while the test
        // floods (seconds on a loaded machine), is not ended for it.
        .env("DRISC__LIVENESS__PONG_TIMEOUT", "30s"),
    );
    let (_, mut held) = hold_session(&server, 1).await;

    // More idle connections than the process may hold files.
    let mut flood = Vec::new();
    for _ in 0..400 {
        match tokio::time::timeout(Duration::from_secs(2), raw_connect(server.port)).await {
            Ok(Ok(stream)) => flood.push(stream),
            _ => break,
        }
    }
    assert_eq!(flood.len(), 400, "the kernel accepted every connection of the flood");
    // Give the server a moment to take the flood in (bounded; checked at the end).
    let shed_logged = |server: &ServerProcess| {
        server
            .output()
            .iter()
            .any(|l| l.contains("closing the oldest idle ones"))
    };
    for _ in 0..100 {
        if shed_logged(&server) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A new player gets a session, a socket and OK.
    let (_, mut newcomer) = tokio::time::timeout(Duration::from_secs(20), hold_session(&server, 2))
        .await
        .unwrap_or_else(|_| panic!("a new player got no session:\n{}", server.output().join("\n")));
    // Both still get PINGs, and their PONGs are taken.
    for _ in 0..4 {
        for player in [&mut held, &mut newcomer] {
            player.expect("PING").await;
            player.send("PONG").await;
        }
    }
    let health = fresh_client().get(server.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let body: Value = health.json().await.unwrap();
    assert_eq!(body["sessions"], 2, "{body}");
    assert!(
        shed_logged(&server),
        "shedding is logged:\n{}",
        server.output().join("\n")
    );
    // Still within its files, with the flood still connected on our side.
    let files = std::fs::read_dir(format!("/proc/{}/fd", server.pid())).unwrap().count();
    assert!(files < 300, "the server holds {files} files");
    drop(flood);
}

#[tokio::test]
async fn a_connection_reserve_as_large_as_the_file_limit_stops_the_start_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = helpers::test_settings(dir.path());
    // More than any machine's open-file limit.
    settings.server.connection_reserve = u64::MAX;
    let error = match drisc::App::build(settings).await {
        Ok(_) => panic!("the server started with no room for connections"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("server.connection_reserve"), "{error}");
}
