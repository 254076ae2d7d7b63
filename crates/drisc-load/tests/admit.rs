//! `drisc-load admit` against the bare-axum baseline on 127.0.0.1: the real
//! program as a child process.

use std::time::Duration;

use tokio::net::TcpListener;

mod common;
use common::{counters, drisc_load, stderr};

/// `--creates N` ends a closed loop after N requests, however long `--duration`
/// allows (bench/restart fills a server with a known number of sessions so).
#[tokio::test]
async fn a_closed_loop_with_creates_stops_after_that_many_requests() {
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = tcp.local_addr().expect("local address");
    let app = drisc_load::baseline::router(Duration::from_secs(1), false);
    let server = tokio::spawn(async move {
        let _ = axum::serve(tcp, app).await;
    });
    let dir = tempfile::tempdir().expect("temporary directory");
    let json = dir.path().join("results.json");
    let target = format!("http://{addr}");

    let output = drisc_load(&[
        "admit",
        "--target",
        &target,
        "--no-admin",
        "--rate",
        "0",
        "--creates",
        "37",
        "--customers",
        "5",
        "--connections",
        "8",
        "--duration",
        "50s",
        "--max-time",
        "55s",
        "--quiet",
        "--json",
        json.to_str().expect("UTF-8 path"),
    ])
    .await;

    server.abort();
    assert!(output.status.success(), "{}", stderr(&output));
    let c = counters(&json);
    assert_eq!(c["sent"], 37, "{c}");
    assert_eq!(c["granted"], 37, "{c}");
}
