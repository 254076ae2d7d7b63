//! `drisc-baseline`: the bare-axum server bench/run measures drisc against (see
//! `drisc_load::baseline`). `--port 0 --ping-interval 10s`; prints
//! `listening on 127.0.0.1:PORT` on stdout.

use std::net::SocketAddr;
use std::time::Duration;

fn parse_args() -> (u16, Duration) {
    let mut port = 0;
    let mut ping = Duration::from_secs(10);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_default();
        match arg.as_str() {
            "--port" => port = value.parse().unwrap_or(0),
            "--ping-interval" => ping = humantime::parse_duration(&value).unwrap_or(ping),
            other => eprintln!("baseline: ignoring {other}"),
        }
    }
    (port, ping)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (port, ping_interval) = parse_args();
    let app = drisc_load::baseline::router(ping_interval, false);
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
