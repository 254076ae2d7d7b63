//! A receiver of drisc's session webhooks, to copy from: it checks each request
//! the Standard Webhooks way (the key is the base64 after `whsec_`; the
//! signature `v1,` + base64(HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}"));
//! a timestamp more than five minutes away is refused, against replays), answers
//! 204 to what it accepts and 401 to the rest, and drops a `webhook-id` it has
//! already seen (drisc delivers at least once: a retry after a lost answer comes
//! twice). The benchmark `bench/webhooks` uses it as its receiver.
//!
//!   cargo run --release --example webhook_receiver -- --secret whsec_... [--listen 127.0.0.1:9000]
//!
//! `--answer TEXT` answers `200` with TEXT as its body instead of `204`, the
//! body written a moment after the head as many servers do (`bench/webhooks-delivery
//! --answer`: a sender that leaves such bodies unread needs a connection per event).
//!
//! It prints `listening on http://ADDR/hook`, and at Ctrl-C or SIGTERM (or at
//! `GET /stats`) how many events it accepted, refused and saw twice, and how many
//! TCP connections it accepted.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::Parser;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a webhook-timestamp may be from this machine's clock (seconds).
const TOLERANCE_SECS: u64 = 300;
/// Ids remembered for duplicate detection, at most: a real receiver keeps them
/// in its database for longer than drisc's `webhooks.max_age`.
const REMEMBERED: usize = 1_000_000;

#[derive(Parser)]
struct Args {
    /// The webhook's secret, as given to or by `PUT /admin/v1/publishers/{p}/webhooks`.
    #[arg(long, env = "WEBHOOK_SECRET")]
    secret: String,
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Answer 200 with this body (written after the head) instead of 204.
    #[arg(long)]
    answer: Option<String>,
}

struct Receiver {
    key: Vec<u8>,
    answer: Option<Bytes>,
    seen: Mutex<HashSet<String>>,
    accepted: AtomicU64,
    refused: AtomicU64,
    duplicates: AtomicU64,
    /// TCP connections accepted.
    connections: AtomicU64,
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name)?.to_str().ok()
}

fn verified(key: &[u8], headers: &HeaderMap, body: &[u8]) -> Option<String> {
    let id = header(headers, "webhook-id")?;
    let timestamp = header(headers, "webhook-timestamp")?;
    let sent_at: u64 = timestamp.parse().ok()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    if now.abs_diff(sent_at) > TOLERANCE_SECS {
        return None;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(key).ok()?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    // Several signatures may come, space-separated (a secret being rotated);
    // `verify_slice` compares in constant time.
    let any = header(headers, "webhook-signature")?
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|s| STANDARD.decode(s).ok())
        .any(|given| mac.clone().verify_slice(&given).is_ok());
    any.then(|| id.to_owned())
}

async fn hook(State(receiver): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(id) = verified(&receiver.key, &headers, &body) else {
        receiver.refused.fetch_add(1, Ordering::Relaxed);
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let fresh = {
        let mut seen = receiver.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= REMEMBERED {
            seen.clear();
        }
        seen.insert(id)
    };
    if fresh {
        // Here a real receiver acts on the event (its JSON is `body`).
        receiver.accepted.fetch_add(1, Ordering::Relaxed);
    } else {
        receiver.duplicates.fetch_add(1, Ordering::Relaxed);
    }
    match receiver.answer.clone() {
        None => StatusCode::NO_CONTENT.into_response(),
        Some(text) => {
            let later = futures_util::stream::once(async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                Ok::<_, std::io::Error>(text)
            });
            (StatusCode::OK, Body::from_stream(later)).into_response()
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let encoded = args
        .secret
        .strip_prefix("whsec_")
        .ok_or_else(|| anyhow::anyhow!("--secret must start with whsec_"))?;
    let receiver = Arc::new(Receiver {
        key: STANDARD.decode(encoded)?,
        answer: args.answer.map(Bytes::from),
        seen: Mutex::default(),
        accepted: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        connections: AtomicU64::new(0),
    });
    #[expect(clippy::disallowed_methods, reason = "a standalone example, not drisc's router")]
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .route("/stats", axum::routing::get(stats))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("listening on http://{}/hook", listener.local_addr()?);
    let counting = receiver.clone();
    let listener = axum::serve::ListenerExt::tap_io(listener, move |tcp| {
        counting.connections.fetch_add(1, Ordering::Relaxed);
        // An answer's body written after its head would otherwise wait for the
        // sender's delayed ACK of the head (Nagle's algorithm): up to 40 ms.
        let _ = tcp.set_nodelay(true);
    });
    let stop = async {
        #[cfg(unix)]
        if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    };
    axum::serve(listener, app).with_graceful_shutdown(stop).await?;
    println!("{}", counts(&receiver));
    Ok(())
}

fn counts(receiver: &Receiver) -> String {
    format!(
        "accepted {} refused {} duplicates {} connections {}",
        receiver.accepted.load(Ordering::Relaxed),
        receiver.refused.load(Ordering::Relaxed),
        receiver.duplicates.load(Ordering::Relaxed),
        receiver.connections.load(Ordering::Relaxed)
    )
}

/// `GET /stats`: the counts so far, as printed at the end.
async fn stats(State(receiver): State<Arc<Receiver>>) -> String {
    counts(&receiver)
}
