//! `drisc-baseline`: the bare-axum server bench/run measures drisc against (see
//! `drisc_load::baseline`), on the C library's malloc. `--port 0 --ping-interval
//! 10s`; prints `listening on 127.0.0.1:PORT` on stdout.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    drisc_load::baseline::serve_from_args().await
}
