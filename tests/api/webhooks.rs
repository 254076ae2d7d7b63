//! Session events as signed webhooks, against a real HTTP receiver this test
//! starts on 127.0.0.1: the signature checked by an implementation of the
//! Standard Webhooks specification written here, retries after failures, order
//! per session, nothing lost across a restart, a bounded outbox when the receiver
//! is down, and targets on private networks refused unless allowed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use crate::helpers::{Api, TestApp, expect_error, spawn_app_with};
use crate::support_process::{ProcessOptions, ServerProcess};

/// 32 bytes of key, base64, behind the prefix.
const SECRET: &str = "whsec_dGhpcy1pcy1hLXRlc3Qtc2VjcmV0LW9mLTMyLWJ5dGVz";

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: String,
    /// What the receiver answered.
    pub status: u16,
}

impl Delivery {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }

    pub fn event_type(&self) -> String {
        self.json()["type"].as_str().unwrap().to_owned()
    }

    pub fn session_id(&self) -> Option<String> {
        self.json()["data"]["sessionId"].as_str().map(str::to_owned)
    }
}

/// A webhook receiver on 127.0.0.1: records every request, answers 500 to the
/// next `fail` ones (then 204).
pub struct Receiver {
    pub url: String,
    pub got: Arc<Mutex<Vec<Delivery>>>,
    fail: Arc<AtomicU32>,
    stop: CancellationToken,
}

#[derive(Clone)]
struct ReceiverState {
    got: Arc<Mutex<Vec<Delivery>>>,
    fail: Arc<AtomicU32>,
}

async fn receive(State(state): State<ReceiverState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let failing = state
        .fail
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let status = if failing {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    };
    state.got.lock().unwrap().push(Delivery {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body: String::from_utf8(body.to_vec()).unwrap(),
        status: status.as_u16(),
    });
    status
}

impl Receiver {
    pub async fn start() -> Receiver {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> Receiver {
        let state = ReceiverState {
            got: Arc::default(),
            fail: Arc::default(),
        };
        #[expect(clippy::disallowed_methods, reason = "a test's own webhook receiver")]
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(state.clone());
        let (url, stop) = serve_receiver(addr, app, Arc::default()).await;
        Receiver {
            url,
            got: state.got,
            fail: state.fail,
            stop,
        }
    }

    /// Answers 500 to the next `n` requests.
    pub fn fail_next(&self, n: u32) {
        self.fail.store(n, Ordering::SeqCst);
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.got.lock().unwrap().clone()
    }

    /// The deliveries it accepted (2xx), in arrival order.
    pub fn accepted(&self) -> Vec<Delivery> {
        self.deliveries().into_iter().filter(|d| d.status < 300).collect()
    }

    /// Waits until `done` holds of the accepted deliveries.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&[Delivery]) -> bool) -> Vec<Delivery> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let accepted = self.accepted();
            if done(&accepted) {
                return accepted;
            }
            assert!(
                Instant::now() < deadline,
                "waited in vain for {what}; got {:#?}",
                self.deliveries()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// Serves a receiver's `app` on `addr` until the token is cancelled, counting the
/// TCP connections it accepts in `connections`; the hook's URL.
async fn serve_receiver(
    addr: SocketAddr,
    app: axum::Router,
    connections: Arc<AtomicUsize>,
) -> (String, CancellationToken) {
    use axum::serve::ListenerExt;
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let listener = listener.tap_io(move |_| {
        connections.fetch_add(1, Ordering::SeqCst);
    });
    let stop = CancellationToken::new();
    let until = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(until.cancelled_owned())
            .await
            .unwrap();
    });
    (url, stop)
}

/// The Standard Webhooks verification, written from the specification: the key
/// is the base64 after `whsec_`; the signature `v1,` + base64(HMAC-SHA256(key,
/// "{id}.{timestamp}.{body}")); the header may hold several, space-separated.
pub fn verify(secret: &str, d: &Delivery) -> bool {
    let key = STANDARD.decode(secret.trim_start_matches("whsec_")).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.{}", d.id, d.timestamp, d.body).as_bytes());
    let expected = STANDARD.encode(mac.finalize().into_bytes());
    d.signature
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|s| s == expected)
}

/// A server that sends webhooks to loopback receivers and retries quickly.
pub async fn webhook_app(configure: impl FnOnce(&mut drisc::Settings)) -> TestApp {
    spawn_app_with(|s| {
        s.webhooks.allow_private_targets = true;
        s.webhooks.retry_base = Duration::from_millis(100);
        s.webhooks.retry_max = Duration::from_millis(400);
        s.webhooks.poll_interval = Duration::from_millis(50);
        s.webhooks.request_timeout = Duration::from_secs(2);
        configure(s);
    })
    .await
}

pub async fn put_webhook(api: &Api, publisher: &str, body: Value) -> reqwest::Response {
    api.admin(Method::PUT, &format!("/publishers/{publisher}/webhooks"), Some(body))
        .await
}

async fn webhook_to(api: &Api, publisher: &str, url: &str) {
    let response = put_webhook(api, publisher, json!({"url": url, "secret": SECRET})).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

/// A loopback port nobody listens on (the listener is gone when this returns):
/// every delivery to it fails to connect.
fn closed_address() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A webhook of publisher "1" for `session.granted` alone.
async fn granted_to(api: &Api, url: &str) {
    let response = put_webhook(
        api,
        "1",
        json!({"url": url, "secret": SECRET, "events": ["session.granted"]}),
    )
    .await;
    assert_eq!(response.status(), 200);
}

async fn webhook_view(api: &Api, publisher: &str) -> Value {
    let response = api
        .admin(Method::GET, &format!("/publishers/{publisher}/webhooks"), None)
        .await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The publisher's outbox counts once they are `expected`, or as they are after
/// 10 s: a delivery is recorded after the receiver answered, by a thread that runs
/// only when the CPU is otherwise idle, so the receiver may see an event first.
async fn outbox_settles_to(api: &Api, publisher: &str, expected: Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let outbox = webhook_view(api, publisher).await["outbox"].clone();
        if outbox == expected || Instant::now() >= deadline {
            return outbox;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn types_of(deliveries: &[Delivery], session: &str) -> Vec<String> {
    deliveries
        .iter()
        .filter(|d| d.session_id().as_deref() == Some(session))
        .map(Delivery::event_type)
        .collect()
}

#[tokio::test]
async fn session_events_reach_the_webhook_signed_the_standard_webhooks_way() {
    let app = webhook_app(|_| {}).await;
    let receiver = Receiver::start().await;
    app.put_offer("1", "o", 1, &[]).await;
    webhook_to(&app, "1", &receiver.url).await;
    let token = app.token("1", "42");
    let granted = app.create_ok(&token, "o", "TV").await;
    let refused = app
        .create(&token, json!({"offerId": "o", "sessionName": "Phone"}))
        .await;
    assert_eq!(refused.status(), 409);
    assert_eq!(app.end_session(&token, &granted.session_id).await.status(), 204);

    let got = receiver
        .wait_for("granted, refused, kicked and ended", |d| d.len() >= 4)
        .await;
    for d in &got {
        assert!(verify(SECRET, d), "bad signature on {d:?}");
        assert!(d.id.starts_with("msg_"), "{}", d.id);
        let sent_at: u64 = d.timestamp.parse().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now.abs_diff(sent_at) < 60, "timestamp {sent_at} is unix seconds");
    }
    // A body changed by one byte no longer verifies: the check above means something.
    let mut forged = got[0].clone();
    forged.body = forged.body.replacen("42", "43", 1);
    assert!(!verify(SECRET, &forged));

    assert_eq!(
        types_of(&got, &granted.session_id),
        ["session.granted", "session.kicked", "session.ended"]
    );
    let ended = got.iter().find(|d| d.event_type() == "session.ended").unwrap().json();
    assert_eq!(ended["data"]["cause"], "kicked");
    assert_eq!(ended["data"]["sessionName"], "TV");
    assert_eq!(ended["data"]["customerId"], "42");
    assert_eq!(ended["data"]["publisherId"], "1");
    assert_eq!(ended["data"]["offerId"], "o");
    let refusal = got.iter().find(|d| d.event_type() == "session.refused").unwrap().json();
    assert_eq!(refusal["data"]["reason"], "limit_exceeded");
    assert_eq!(refusal["data"]["enforced"], true);
    assert_eq!(refusal["data"]["sessionId"], Value::Null);
    assert_eq!(refusal["data"]["sessionName"], "Phone");
    receiver.stop();
    app.stop().await;
}

#[tokio::test]
async fn a_webhook_gets_only_the_event_types_it_lists_and_never_its_secret_back() {
    let app = webhook_app(|_| {}).await;
    let receiver = Receiver::start().await;
    app.put_offer("1", "o", 1, &[]).await;
    let response = put_webhook(
        &app,
        "1",
        json!({"url": receiver.url, "secret": SECRET, "events": ["session.ended"]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let put: Value = response.json().await.unwrap();
    assert_eq!(put.get("secret"), None, "a secret given is never echoed");
    let view = webhook_view(&app, "1").await;
    assert_eq!(view["events"], json!(["session.ended"]));
    assert_eq!(view["url"], receiver.url);
    assert!(!view.to_string().contains(&SECRET[12..]), "{view}");
    assert!(view["secretHint"].as_str().unwrap().starts_with("whsec_"));

    let token = app.token("1", "42");
    let granted = app.create_ok(&token, "o", "TV").await;
    app.end_session(&token, &granted.session_id).await;
    let got = receiver.wait_for("the end", |d| !d.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let types: Vec<_> = receiver.accepted().iter().map(Delivery::event_type).collect();
    assert_eq!(types, ["session.ended"], "{got:?}");

    // Without a secret, the server makes one and shows it once.
    let response = put_webhook(&app, "1", json!({"url": receiver.url})).await;
    let made: Value = response.json().await.unwrap();
    let secret = made["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_") && secret.len() > 40, "{made}");
    assert_eq!(webhook_view(&app, "1").await.get("secret"), None);

    let response = app.admin(Method::DELETE, "/publishers/1/webhooks", None).await;
    assert_eq!(response.status(), 204);
    let response = app.admin(Method::GET, "/publishers/1/webhooks", None).await;
    expect_error(response, 404, "NotFound").await;
    receiver.stop();
    app.stop().await;
}

#[tokio::test]
async fn a_failing_receiver_gets_the_event_again_and_a_sessions_later_events_wait_for_it() {
    let app = webhook_app(|_| {}).await;
    let receiver = Receiver::start().await;
    app.put_offer("1", "o", 2, &[]).await;
    webhook_to(&app, "1", &receiver.url).await;
    receiver.fail_next(3);
    let token = app.token("1", "42");
    let granted = app.create_ok(&token, "o", "TV").await;
    app.end_session(&token, &granted.session_id).await;

    let got = receiver
        .wait_for("the session's three events", |d| {
            types_of(d, &granted.session_id).len() == 3
        })
        .await;
    assert_eq!(
        types_of(&got, &granted.session_id),
        ["session.granted", "session.kicked", "session.ended"]
    );
    let all = receiver.deliveries();
    let first = &all[0];
    assert_eq!(first.event_type(), "session.granted");
    // The grant was tried 4 times under one id (3 failures, then accepted)...
    let tries: Vec<_> = all.iter().filter(|d| d.id == first.id).collect();
    assert_eq!(tries.len(), 4, "{all:#?}");
    assert_eq!(tries.iter().filter(|d| d.status == 500).count(), 3);
    // ...and nothing of that session came before the grant was accepted.
    let accepted_at = all.iter().position(|d| d.id == first.id && d.status < 300).unwrap();
    assert!(
        all[..accepted_at].iter().all(|d| d.id == first.id),
        "a later event overtook the grant: {all:#?}"
    );
    assert_eq!(
        outbox_settles_to(&app, "1", json!({"deadLettered": 0, "pending": 0})).await,
        json!({"deadLettered": 0, "pending": 0})
    );
    receiver.stop();
    app.stop().await;
}

#[tokio::test]
async fn an_event_is_dead_lettered_after_the_last_attempt_and_counted() {
    let app = webhook_app(|s| s.webhooks.max_attempts = 2).await;
    let receiver = Receiver::start().await;
    app.put_offer("1", "o", 1, &[]).await;
    granted_to(&app, &receiver.url).await;
    receiver.fail_next(1000);
    app.create_ok(&app.token("1", "42"), "o", "TV").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view = webhook_view(&app, "1").await;
        if view["outbox"]["deadLettered"] == 1 {
            assert_eq!(view["outbox"]["pending"], 0);
            break;
        }
        assert!(Instant::now() < deadline, "never dead-lettered: {view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(receiver.deliveries().len(), 2, "max_attempts = 2");
    let metrics = metrics_text(&app).await;
    assert!(
        metrics.contains("drisc_webhook_deliveries_total{outcome=\"dead_lettered\"} 1"),
        "{metrics}"
    );
    receiver.stop();
    app.stop().await;
}

/// What [`Talkative`] answers each request with: `200` and a short body, or `200`
/// and a body that never ends.
#[derive(Clone, Copy)]
enum Answer {
    Short(&'static str),
    Endless,
}

/// A receiver that answers with a body, as many real ones do (where
/// [`Receiver`] answers `204`), and counts the TCP connections it accepted, the
/// requests it answered and the body bytes it handed to its socket.
struct Talkative {
    url: String,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    produced: Arc<AtomicU64>,
    stop: CancellationToken,
}

#[derive(Clone)]
struct TalkativeState {
    answer: Answer,
    requests: Arc<AtomicUsize>,
    produced: Arc<AtomicU64>,
}

async fn talk(State(state): State<TalkativeState>, _body: Bytes) -> axum::response::Response {
    use axum::response::IntoResponse;
    state.requests.fetch_add(1, Ordering::SeqCst);
    match state.answer {
        Answer::Short(text) => (StatusCode::OK, body_after_head(text)).into_response(),
        Answer::Endless => {
            let chunk = Bytes::from(vec![b'x'; 16 * 1024]);
            let produced = state.produced.clone();
            let endless = futures_util::stream::repeat_with(move || {
                produced.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                Ok::<_, std::io::Error>(chunk.clone())
            });
            (StatusCode::OK, axum::body::Body::from_stream(endless)).into_response()
        }
    }
}

/// A body of `text` written a moment after the answer's head, in a write of its
/// own, as from many servers: a client then has the head before the body is in.
fn body_after_head(text: &'static str) -> axum::body::Body {
    axum::body::Body::from_stream(futures_util::stream::once(async move {
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok::<_, std::io::Error>(Bytes::from_static(text.as_bytes()))
    }))
}

/// Waits (30 s at most: deliveries run at nice 19, the first starved on a busy
/// machine) until a receiver's count of requests reaches `n`.
async fn wait_for_requests(requests: &AtomicUsize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while requests.load(Ordering::SeqCst) < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} requests came",
            requests.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Talkative {
    async fn start(answer: Answer) -> Talkative {
        let connections = Arc::new(AtomicUsize::new(0));
        let state = TalkativeState {
            answer,
            requests: Arc::default(),
            produced: Arc::default(),
        };
        #[expect(clippy::disallowed_methods, reason = "a test's own webhook receiver")]
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(talk))
            .with_state(state.clone());
        let (url, stop) = serve_receiver("127.0.0.1:0".parse().unwrap(), app, connections.clone()).await;
        Talkative {
            url,
            connections,
            requests: state.requests,
            produced: state.produced,
            stop,
        }
    }

    async fn wait_for_requests(&self, n: usize) {
        wait_for_requests(&self.requests, n).await;
    }
}

/// The answer's body is read to its end, so its HTTP/1.1 connection carries the
/// next event. Unread, a `200 OK` with two bytes of body after its head cost a new
/// connection per event (and as many sockets in `TIME_WAIT`): 100 for 100 here.
/// The bound leaves room for a connection opened while another is on its way back
/// to the pool.
#[tokio::test]
async fn a_receiver_that_answers_with_a_body_keeps_its_connections() {
    let app = webhook_app(|s| s.webhooks.max_in_flight = 4).await;
    let receiver = Talkative::start(Answer::Short("ok")).await;
    app.put_offer("1", "o", 1, &[]).await;
    granted_to(&app, &receiver.url).await;
    let events = 100;
    for customer in 0..events {
        app.create_ok(&app.token("1", customer.to_string()), "o", "TV").await;
    }
    receiver.wait_for_requests(events).await;
    // 4 in flight need 4 connections; a few more may open while a finished
    // answer's connection is on its way back to the pool. One per event is the bug.
    let connections = receiver.connections.load(Ordering::SeqCst);
    assert!(
        connections <= 25,
        "{connections} connections for {events} events, at most 4 at once"
    );
    assert_eq!(
        outbox_settles_to(&app, "1", json!({"deadLettered": 0, "pending": 0})).await,
        json!({"deadLettered": 0, "pending": 0})
    );
    receiver.stop.cancel();
    app.stop().await;
}

/// An answer whose body never ends counts by its status (delivered), and is read
/// no further than a bound: the connection is closed after a little of it, not
/// read until `webhooks.request_timeout`.
#[tokio::test]
async fn an_answer_that_never_ends_is_delivered_and_read_no_further_than_a_bound() {
    let app = webhook_app(|_| {}).await;
    let receiver = Talkative::start(Answer::Endless).await;
    app.put_offer("1", "o", 1, &[]).await;
    granted_to(&app, &receiver.url).await;
    for customer in 0..3 {
        app.create_ok(&app.token("1", customer.to_string()), "o", "TV").await;
    }
    receiver.wait_for_requests(3).await;
    assert_eq!(
        outbox_settles_to(&app, "1", json!({"deadLettered": 0, "pending": 0})).await,
        json!({"deadLettered": 0, "pending": 0})
    );
    assert_eq!(receiver.requests.load(Ordering::SeqCst), 3, "each event once: no retry");
    // Read to its end (or until the 2 s timeout), a body this fast on loopback
    // would be gigabytes; the bound is 64 KiB, plus what the sockets buffer.
    let produced = receiver.produced.load(Ordering::SeqCst);
    assert!(produced < 64 << 20, "{produced} bytes of body produced");
    receiver.stop.cancel();
    app.stop().await;
}

/// An HTTPS receiver on 127.0.0.1, its certificate signed by the test CA of
/// `pki` (the one `store_tls` makes): answers `200` and `ok` written after its head,
/// and counts TCP connections accepted, TLS handshakes completed and requests.
struct HttpsReceiver {
    url: String,
    accepted: Arc<AtomicUsize>,
    handshakes: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl HttpsReceiver {
    async fn start(pki: &crate::store_tls::Pki) -> HttpsReceiver {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        drisc::store::redis::tls::install_crypto_provider();
        let chain = CertificateDer::pem_file_iter(pki.path("server.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(pki.path("server.key")).unwrap();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/hook", listener.local_addr().unwrap());
        let (accepted, handshakes, requests): (Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<AtomicUsize>) =
            (Arc::default(), Arc::default(), Arc::default());
        let stop = CancellationToken::new();
        let (until, counts) = (stop.clone(), (accepted.clone(), handshakes.clone(), requests.clone()));
        tokio::spawn(async move {
            let (accepted, handshakes, requests) = counts;
            loop {
                let tcp = tokio::select! {
                    got = listener.accept() => match got {
                        Ok((tcp, _)) => tcp,
                        Err(_) => continue,
                    },
                    () = until.cancelled() => return,
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (acceptor, handshakes, requests) = (acceptor.clone(), handshakes.clone(), requests.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    handshakes.fetch_add(1, Ordering::SeqCst);
                    let answer = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                        let requests = requests.clone();
                        async move {
                            let _ = axum::body::to_bytes(axum::body::Body::new(request.into_body()), 1 << 20).await;
                            requests.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(body_after_head("ok")))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), answer)
                        .await;
                });
            }
        });
        HttpsReceiver {
            url,
            accepted,
            handshakes,
            requests,
            stop,
        }
    }
}

/// `webhooks.ca_file`: an HTTPS receiver whose certificate the operator's own CA
/// signed is trusted, and over TLS the answer read to its end keeps each
/// connection for the next event: a handshake per connection, not per event.
#[tokio::test]
async fn an_https_receiver_signed_by_the_operators_ca_is_trusted_and_keeps_its_connections() {
    let pki = crate::store_tls::Pki::new("drisc");
    let ca = pki.file("ca.pem");
    let app = webhook_app(|s| {
        s.webhooks.max_in_flight = 4;
        s.webhooks.ca_file = ca;
    })
    .await;
    let receiver = HttpsReceiver::start(&pki).await;
    app.put_offer("1", "o", 1, &[]).await;
    granted_to(&app, &receiver.url).await;
    let events = 50;
    for customer in 0..events {
        app.create_ok(&app.token("1", customer.to_string()), "o", "TV").await;
    }
    wait_for_requests(&receiver.requests, events).await;
    let handshakes = receiver.handshakes.load(Ordering::SeqCst);
    assert!(
        handshakes <= 15,
        "{handshakes} TLS handshakes for {events} events, at most 4 at once"
    );
    receiver.stop.cancel();
    app.stop().await;
}

/// Without `webhooks.ca_file` the same receiver is not trusted: the handshake fails,
/// nothing is sent, and the event waits for a retry.
#[tokio::test]
async fn an_https_receiver_of_an_unknown_ca_gets_nothing_and_the_event_is_retried() {
    let pki = crate::store_tls::Pki::new("drisc");
    let app = webhook_app(|_| {}).await;
    let receiver = HttpsReceiver::start(&pki).await;
    app.put_offer("1", "o", 1, &[]).await;
    granted_to(&app, &receiver.url).await;
    app.create_ok(&app.token("1", "42"), "o", "TV").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let failed = counter(
            &metrics_text(&app).await,
            "drisc_webhook_deliveries_total{outcome=\"failed\"}",
        );
        if failed >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no failed attempt counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(receiver.accepted.load(Ordering::SeqCst) >= 1, "drisc connected");
    assert_eq!(
        receiver.handshakes.load(Ordering::SeqCst),
        0,
        "and the handshake failed"
    );
    assert_eq!(receiver.requests.load(Ordering::SeqCst), 0);
    assert_eq!(webhook_view(&app, "1").await["outbox"]["pending"], 1);
    receiver.stop.cancel();
    app.stop().await;
}

/// A `webhooks.ca_file` that cannot be read, or holds no certificate, stops the
/// start with the setting's name.
#[test]
fn a_webhooks_ca_file_is_checked_when_the_settings_load() {
    let pki = crate::store_tls::Pki::new("drisc");
    let dir = tempfile::tempdir().unwrap();
    let error = |file: String| {
        let mut s = crate::helpers::test_settings(dir.path());
        s.webhooks.ca_file = file;
        format!("{:#}", s.validate().expect_err("refused"))
    };
    let e = error(pki.file("not-a-certificate.pem"));
    assert!(
        e.contains("webhooks.ca_file") && e.contains("no PEM certificate"),
        "{e}"
    );
    let e = error("/nonexistent/ca.pem".into());
    assert!(e.contains("webhooks.ca_file") && e.contains("cannot read"), "{e}");
    let mut s = crate::helpers::test_settings(dir.path());
    s.webhooks.ca_file = pki.file("ca.pem");
    assert!(s.validate().is_ok());
}

pub async fn metrics_text(api: &Api) -> String {
    api.http
        .get(api.url("/metrics"))
        .bearer_auth(&api.admin_key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn events_in_the_outbox_when_the_server_stops_are_delivered_after_it_starts() {
    let app = webhook_app(|s| s.webhooks.retry_max = Duration::from_millis(200)).await;
    let receiver = Receiver::start().await;
    app.put_offer("1", "o", 3, &[]).await;
    webhook_to(&app, "1", &receiver.url).await;
    // The receiver refuses everything while the first server runs.
    receiver.fail_next(u32::MAX);
    let token = app.token("1", "42");
    let mut sessions = Vec::new();
    for name in ["TV", "Phone", "Tablet"] {
        sessions.push(app.create_ok(&token, "o", name).await.session_id);
    }
    app.end_session(&token, &sessions[0]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while webhook_view(&app, "1").await["outbox"]["pending"] != 5 {
        assert!(Instant::now() < deadline, "events never reached the outbox");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(receiver.accepted().is_empty());
    let (settings, data_dir) = app.stop().await;

    receiver.fail_next(0);
    let app = crate::helpers::restart_with(settings, data_dir).await;
    let got = receiver
        .wait_for("every event of the first run", |d| d.len() >= 5)
        .await;
    for d in &got {
        assert!(verify(SECRET, d));
    }
    assert_eq!(
        types_of(&got, &sessions[0]),
        ["session.granted", "session.kicked", "session.ended"]
    );
    for id in &sessions[1..] {
        assert_eq!(types_of(&got, id), ["session.granted"]);
    }
    assert_eq!(
        outbox_settles_to(&app, "1", json!({"deadLettered": 0, "pending": 0})).await["pending"],
        0
    );
    receiver.stop();
    app.stop().await;
}

#[tokio::test]
async fn a_receiver_down_for_long_fills_the_outbox_to_its_cap_and_no_further() {
    let app = webhook_app(|s| s.webhooks.outbox_cap = 6).await;
    let closed = closed_address();
    app.put_offer("1", "o", 1, &[]).await;
    webhook_to(&app, "1", &format!("http://{closed}/hook")).await;
    let token = app.token("1", "42");
    for i in 0..10 {
        let granted = app.create_ok(&token, "o", &format!("S{i}")).await;
        app.end_session(&token, &granted.session_id).await;
    }
    // 30 events (granted, kicked, ended per session) for room for 6.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = metrics_text(&app).await;
        let refused = counter(&metrics, "drisc_session_events_dropped_total{reason=\"outbox_full\"}");
        if refused >= 24 {
            assert_eq!(refused, 24, "{metrics}");
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Exact while deliveries are tried and fail (the count once read low for a
    // moment, seen as 0, while failed events were written back as rows).
    let view = webhook_view(&app, "1").await;
    assert_eq!(view["outbox"]["pending"], 6, "{view}");
    // The receiver comes back: what the outbox kept (the oldest: the first two
    // sessions' events) is delivered, each session's in order.
    let receiver = Receiver::start_on(closed).await;
    let got = receiver.wait_for("the six kept", |d| d.len() >= 6).await;
    for name in ["S0", "S1"] {
        let types: Vec<_> = got
            .iter()
            .filter(|d| d.json()["data"]["sessionName"] == name)
            .map(Delivery::event_type)
            .collect();
        assert_eq!(types, ["session.granted", "session.kicked", "session.ended"], "{name}");
    }
    receiver.stop();
    app.stop().await;
}

/// The count a JSON log line gives in `field` (0 when it gives none).
fn logged_count(line: &str, field: &str) -> u64 {
    let Ok(line) = serde_json::from_str::<Value>(line) else {
        return 0;
    };
    line["fields"][field].as_u64().unwrap_or(0)
}

pub fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test]
async fn a_target_on_a_private_network_is_refused_unless_the_operator_allows_it() {
    let app = spawn_app_with(|_| {}).await;
    app.put_offer("1", "o", 1, &[]).await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://[::1]:9/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://192.168.1.1/hook",
        "http://[::ffff:127.0.0.1]/hook",
    ] {
        let response = put_webhook(&app, "1", json!({"url": url, "secret": SECRET})).await;
        let body = expect_error(response, 400, "InvalidRequest").await;
        assert!(
            body["message"].as_str().unwrap().contains("allow_private_targets"),
            "{url}: {body}"
        );
    }
    let response = app.admin(Method::GET, "/publishers/1/webhooks", None).await;
    expect_error(response, 404, "NotFound").await;
    app.stop().await;
}

#[tokio::test]
async fn bad_webhooks_are_refused_with_a_reason() {
    let app = webhook_app(|_| {}).await;
    app.put_offer("1", "o", 1, &[]).await;
    let long = format!("https://example.com/{}", "a".repeat(3000));
    for (body, says) in [
        (json!({"url": "ftp://example.com/x", "secret": SECRET}), "http"),
        (json!({"url": "not a url", "secret": SECRET}), "valid URL"),
        (json!({"url": long, "secret": SECRET}), "2048"),
        (json!({"url": "https://u:p@example.com/", "secret": SECRET}), "password"),
        (json!({"url": "http://127.0.0.1/x", "secret": "plain"}), "whsec_"),
        (
            json!({"url": "http://127.0.0.1/x", "secret": "whsec_c2hvcnQ="}),
            "24 to 64",
        ),
        (
            json!({"url": "http://127.0.0.1/x", "events": ["session.exploded"]}),
            "unknown event type",
        ),
        (json!({"url": "http://127.0.0.1/x", "events": []}), "at least one"),
        (json!({"url": "http://127.0.0.1/x", "colour": "red"}), "unknown field"),
    ] {
        let response = put_webhook(&app, "1", body.clone()).await;
        let error = expect_error(response, 400, "InvalidRequest").await;
        assert!(error["message"].as_str().unwrap().contains(says), "{body}: {error}");
    }
    let response = put_webhook(&app, "nobody", json!({"url": "http://127.0.0.1/x"})).await;
    expect_error(response, 404, "NotFound").await;
    app.stop().await;
}

#[tokio::test]
async fn a_private_target_is_refused_at_delivery_too_once_the_operator_disallows_it() {
    let app = webhook_app(|s| s.webhooks.max_attempts = 2).await;
    let receiver = Receiver::start().await;
    let port = receiver
        .url
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches("/hook")
        .to_owned();
    // Registered while allowed: an IP literal, and a name that resolves to loopback
    // (what a DNS answer changed after registration looks like).
    for (publisher, url) in [
        ("1", receiver.url.clone()),
        ("2", format!("http://localhost:{port}/hook")),
    ] {
        app.put_offer(publisher, "o", 1, &[]).await;
        let body = json!({"url": url, "secret": SECRET, "events": ["session.granted"]});
        assert_eq!(put_webhook(&app, publisher, body).await.status(), 200);
    }
    let (mut settings, data_dir) = app.stop().await;
    settings.webhooks.allow_private_targets = false;
    let app = crate::helpers::restart_with(settings, data_dir).await;
    for publisher in ["1", "2"] {
        app.create_ok(&app.token(publisher, "42"), "o", "TV").await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for publisher in ["1", "2"] {
        loop {
            let view = webhook_view(&app, publisher).await;
            if view["outbox"]["deadLettered"] == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "publisher {publisher}: {view}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(receiver.deliveries().is_empty(), "{:?}", receiver.deliveries());
    receiver.stop();
    app.stop().await;
}

/// The scheduling policy (SCHED_IDLE is 5) of every thread of this process named `name`.
#[cfg(target_os = "linux")]
fn policies_of_threads_named(name: &str) -> Vec<u32> {
    let mut policies = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // The fields after the name, from the third; the policy is the 41st.
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        if let Some(policy) = after_name.split_whitespace().nth(41 - 3).and_then(|p| p.parse().ok()) {
            policies.push(policy);
        }
    }
    policies
}

/// The policies of the test process's threads named `name`, once none is still
/// starting: other tests of this process start delivery threads of their own,
/// and a thread just started has its name before it sets its policy, its first
/// act. Read again (up to 2 s) while some thread is not at SCHED_IDLE; one that
/// stays off it is what the caller's assertion then reports.
#[cfg(target_os = "linux")]
async fn settled_policies_of_threads_named(name: &str) -> Vec<u32> {
    let mut policies = policies_of_threads_named(name);
    for _ in 0..40 {
        if policies.iter().all(|p| *p == 5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        policies = policies_of_threads_named(name);
    }
    policies
}

/// Delivery runs on a thread of its own at SCHED_IDLE, so that it never takes
/// the CPU from admissions (`webhooks.delivery_priority`, "idle" by default); the
/// events still arrive, signed, from there.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn webhooks_are_sent_from_a_thread_that_only_gets_idle_cpu() {
    let app = webhook_app(|_| {}).await;
    let receiver = Receiver::start().await;
    app.put_offer("1", "o", 1, &[]).await;
    // A host name, so that the delivery's runtime resolves it on its blocking pool.
    webhook_to(&app, "1", &receiver.url.replace("127.0.0.1", "localhost")).await;
    let token = app.token("1", "42");
    let granted = app.create_ok(&token, "o", "TV").await;
    let got = receiver.wait_for("the grant", |d| !d.is_empty()).await;
    assert!(verify(SECRET, &got[0]));
    assert_eq!(types_of(&got, &granted.session_id), ["session.granted"]);
    let delivery = settled_policies_of_threads_named("drisc-webhooks").await;
    assert!(!delivery.is_empty(), "no delivery thread");
    assert!(delivery.iter().all(|p| *p == 5), "policies {delivery:?}");
    // Its look-up thread did not escape to the normal policy.
    let lookups = settled_policies_of_threads_named("drisc-hooks-io").await;
    assert!(
        !lookups.is_empty(),
        "the host name was not looked up on the delivery's runtime"
    );
    assert!(lookups.iter().all(|p| *p == 5), "policies {lookups:?}");
    receiver.stop();
    app.stop().await;
}

/// A node of a cluster on `redis` that sends webhooks to loopback receivers,
/// and purges Redis of dead sessions every 300 ms.
async fn redis_webhook_node(redis: &crate::support_redis::RedisServer) -> TestApp {
    redis_webhook_node_with(redis, Duration::from_secs(1), PURGE_OFTEN).await
}

const PURGE_OFTEN: Duration = Duration::from_millis(300);
/// For the tests of what an admission or a connection reports: no purge round
/// comes first (the first one runs an interval after the node starts).
const PURGE_RARELY: Duration = drisc::config::MAX_PURGE_INTERVAL;

/// How long a session whose node stopped waits, marked lost, before its end is
/// reported, in these tests (longer than their 2 s `pong_timeout`).
const LOST_AFTER: Duration = Duration::from_secs(3);

/// A node on `redis` whose grants wait `connect_timeout` for their player.
async fn redis_webhook_node_with(
    redis: &crate::support_redis::RedisServer,
    connect_timeout: Duration,
    purge_interval: Duration,
) -> TestApp {
    redis_webhook_node_lost_after(redis, connect_timeout, purge_interval, LOST_AFTER).await
}

async fn redis_webhook_node_lost_after(
    redis: &crate::support_redis::RedisServer,
    connect_timeout: Duration,
    purge_interval: Duration,
    lost_after: Duration,
) -> TestApp {
    let url = redis.url.clone();
    webhook_app(move |s| {
        s.storage.sessions = drisc::config::SessionBackend::Redis;
        s.storage.redis_url = url;
        s.liveness.ping_interval = Duration::from_millis(500);
        s.liveness.pong_timeout = Duration::from_secs(2);
        s.liveness.connect_timeout = connect_timeout;
        s.cluster.refresh_interval = Duration::from_millis(200);
        s.cluster.purge_interval = purge_interval;
        s.cluster.node_lost_after = lost_after;
        // Creates are retried until a slot frees: the customer's rate limit is not under test.
        s.limits.customer_burst = 1000;
    })
    .await
}

/// Creates on `node` until one is granted (the dead session's slot freed), within `patience`.
async fn create_until_granted(node: &Api, token: &str, patience: Duration) -> crate::helpers::Granted {
    let started = Instant::now();
    loop {
        let response = node
            .create(token, json!({"offerId": "o", "sessionName": "Phone"}))
            .await;
        if response.status() == 200 {
            return crate::helpers::granted(response).await;
        }
        assert_eq!(response.status(), 409, "{}", response.text().await.unwrap());
        assert!(started.elapsed() < patience, "the dead session's slot was not freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node on `redis` run as a process of its own (so that it can get SIGKILL),
/// with offer "o" (limit 1) on it and on `survivor`, the webhook to `receiver`
/// on the survivor only (each node has its own settings database), and a
/// session of `token`'s customer granted and live on it. The directory holds
/// its data: keep it as long as the process. The player is returned still
/// connected: drop it only once the node is gone, or the session would be a
/// detached one.
async fn live_on_a_doomed_node(
    redis_url: &str,
    lost_after: Duration,
    survivor: &TestApp,
    receiver: &Receiver,
    token: &str,
) -> (
    crate::support_process::ServerProcess,
    crate::helpers::Granted,
    tempfile::TempDir,
    crate::players::Player,
) {
    let dir = tempfile::tempdir().unwrap();
    let options = crate::support_process::ProcessOptions::default()
        .env("DRISC__STORAGE__SESSIONS", "redis")
        .env("DRISC__STORAGE__REDIS_URL", redis_url)
        .env("DRISC__LIVENESS__PING_INTERVAL", "500ms")
        .env("DRISC__LIVENESS__PONG_TIMEOUT", "2s")
        .env("DRISC__CLUSTER__REFRESH_INTERVAL", "200ms")
        .env("DRISC__CLUSTER__PURGE_INTERVAL", "300ms")
        .env(
            "DRISC__CLUSTER__NODE_LOST_AFTER",
            format!("{}ms", lost_after.as_millis()),
        )
        .env("DRISC__WEBHOOKS__ALLOW_PRIVATE_TARGETS", "true")
        .env("DRISC__WEBHOOKS__POLL_INTERVAL", "50ms");
    let doomed = crate::support_process::ServerProcess::start(dir.path(), options);
    survivor.put_offer("1", "o", 1, &[]).await;
    doomed.api().put_offer("1", "o", 1, &[]).await;
    webhook_to(survivor, "1", &receiver.url).await;
    let tv = doomed.api().create_ok(token, "o", "TV").await;
    let mut player = crate::players::connect_ok(&tv.endpoint).await;
    assert!(
        player.keep_alive_for(Duration::from_millis(1200)).await > 0,
        "live on the doomed node"
    );
    (doomed, tv, dir, player)
}

/// `receiver` got one event about `tv` (of customer `customer`): its
/// `session.ended` with cause `node_lost`; and `survivor` counted that end.
async fn reported_node_lost_once(
    receiver: &Receiver,
    survivor: &TestApp,
    tv: &crate::helpers::Granted,
    customer: &str,
) {
    let ended: Vec<Value> = receiver
        .deliveries()
        .iter()
        .filter(|d| d.session_id().as_deref() == Some(tv.session_id.as_str()))
        .map(Delivery::json)
        .collect();
    assert_eq!(ended.len(), 1, "reported once: {ended:?}");
    assert_eq!(ended[0]["type"], "session.ended");
    assert_eq!(ended[0]["data"]["cause"], "node_lost");
    assert_eq!(ended[0]["data"]["sessionName"], "TV");
    assert_eq!(ended[0]["data"]["offerId"], "o");
    assert_eq!(ended[0]["data"]["customerId"], customer);
    let metrics = metrics_text(survivor).await;
    assert_eq!(
        counter(&metrics, r#"drisc_sessions_ended_total{cause="node_lost"}"#),
        1,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_session_whose_node_was_killed_is_reported_ended_with_cause_node_lost() {
    let redis = crate::support_redis::RedisServer::start();
    let survivor = redis_webhook_node(&redis).await;
    let receiver = Receiver::start().await;
    let token = survivor.token("1", "42");
    let (mut doomed, tv, _dir, _player) =
        live_on_a_doomed_node(&redis.url, LOST_AFTER, &survivor, &receiver, &token).await;
    assert_eq!(survivor.create(&token, json!({"offerId": "o"})).await.status(), 409);
    doomed.kill9();

    let phone = create_until_granted(&survivor, &token, Duration::from_secs(10)).await;
    let got = receiver
        .wait_for("the killed node's session ended", |d| {
            d.iter()
                .any(|d| d.session_id().as_deref() == Some(tv.session_id.as_str()))
        })
        .await;
    assert!(got.iter().all(|d| verify(SECRET, d)));
    // The session that took the slot was reported too.
    receiver
        .wait_for("the new session granted", |d| {
            d.iter()
                .any(|d| d.session_id().as_deref() == Some(phone.session_id.as_str()))
        })
        .await;
    reported_node_lost_once(&receiver, &survivor, &tv, "42").await;
    receiver.stop();
    survivor.stop().await;
}

/// No admission, take-over or connection of the same customer follows: the
/// survivor's purge rounds are what find the killed node's session.
#[tokio::test]
async fn a_session_whose_node_was_killed_is_reported_ended_by_the_purge_with_nothing_else_happening() {
    let redis = crate::support_redis::RedisServer::start();
    let survivor = redis_webhook_node(&redis).await;
    let receiver = Receiver::start().await;
    let token = survivor.token("1", "43");
    let (mut doomed, tv, _dir, _player) =
        live_on_a_doomed_node(&redis.url, LOST_AFTER, &survivor, &receiver, &token).await;
    doomed.kill9();

    let got = receiver
        .wait_for("the killed node's session ended", |d| {
            d.iter()
                .any(|d| d.session_id().as_deref() == Some(tv.session_id.as_str()))
        })
        .await;
    assert!(got.iter().all(|d| verify(SECRET, d)));
    // A few more rounds: none reports it again.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    reported_node_lost_once(&receiver, &survivor, &tv, "43").await;
    receiver.stop();
    survivor.stop().await;
}

/// A node frozen (SIGSTOP: a process starved of CPU, a VM paused) for longer
/// than `pong_timeout` loses its sessions in Redis: the survivor's purge marks
/// them lost, then, `node_lost_after` later, deletes them and reports them
/// `node_lost`. When the node thaws, its PONG deadline has passed: the end it
/// sends finds the session gone in Redis and reports nothing, and its player is
/// told EXPIRED. Ended once, on the wire and in the events alike.
#[tokio::test]
async fn a_session_reported_node_lost_while_its_node_was_frozen_is_not_put_back_when_it_thaws() {
    let redis = crate::support_redis::RedisServer::start();
    let survivor = redis_webhook_node(&redis).await;
    let receiver = Receiver::start().await;
    let token = survivor.token("1", "45");
    let (doomed, tv, _dir, mut player) =
        live_on_a_doomed_node(&redis.url, LOST_AFTER, &survivor, &receiver, &token).await;
    // The thawed node's own events reach the receiver too.
    webhook_to(&doomed.api(), "1", &receiver.url).await;
    doomed.signal("STOP");
    receiver
        .wait_for("the frozen node's session reported ended by the purge", |d| {
            d.iter()
                .any(|d| d.session_id().as_deref() == Some(tv.session_id.as_str()))
        })
        .await;
    doomed.signal("CONT");

    // Thawed: the node finds the session ended, and tells its player.
    let (_, told) = player.play_until_told(Duration::from_secs(8)).await;
    assert_eq!(
        told,
        Some(crate::players::Seen::Message(json!({"action": "EXPIRED"}))),
        "a session reported node_lost played on after its node thawed"
    );
    player.expect_close(4003).await;
    // Time for the thawed node to report anything it would (its delivery polls every 50 ms).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    reported_node_lost_once(&receiver, &survivor, &tv, "45").await;
    assert_eq!(
        doomed.api().create(&token, json!({"offerId": "o"})).await.status(),
        200,
        "the slot is free"
    );
    receiver.stop();
    survivor.stop().await;
}

/// A node cut off from Redis (the network between them stalls; Redis and the
/// other node go on, and so do the node's players, who PONG it all along) for
/// longer than `node_lost_after` has its sessions reported `node_lost` by the
/// survivor's purge. When the network heals the node puts none of them back
/// (its outage was longer than `node_lost_after`): the player is told EXPIRED
/// instead of playing on, and no event names the session again.
#[tokio::test]
async fn a_session_reported_node_lost_while_its_node_was_cut_off_is_not_put_back_when_it_is_back() {
    let redis = crate::support_redis::RedisServer::start();
    let relay = crate::support_proxy::Relay::start(([127, 0, 0, 1], redis.port).into());
    let survivor = redis_webhook_node(&redis).await;
    let receiver = Receiver::start().await;
    let token = survivor.token("1", "46");
    let relayed = format!("redis://{}", relay.addr);
    let (doomed, tv, _dir, player) = live_on_a_doomed_node(&relayed, LOST_AFTER, &survivor, &receiver, &token).await;
    webhook_to(&doomed.api(), "1", &receiver.url).await;
    // The player PONGs the node all along.
    let playing = player.play_in_background(Duration::from_secs(30));
    relay.hold();
    receiver
        .wait_for("the cut-off node's session reported ended by the purge", |d| {
            d.iter()
                .any(|d| d.session_id().as_deref() == Some(tv.session_id.as_str()))
        })
        .await;
    relay.release();

    let (pings, told, mut player) = playing.await.expect("the player's task");
    assert!(pings > 2, "the node pinged its player while cut off: {pings}");
    assert_eq!(
        told,
        Some(crate::players::Seen::Message(json!({"action": "EXPIRED"}))),
        "a session reported node_lost played on after its node was back"
    );
    player.expect_close(4003).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    reported_node_lost_once(&receiver, &survivor, &tv, "46").await;
    receiver.stop();
    survivor.stop().await;
}

/// A node cut off from Redis for longer than `pong_timeout` but less than
/// `node_lost_after`: the survivor's purge marks its session lost (its slot is
/// free meanwhile) and reports nothing; when the network heals the node puts
/// the session back and its player plays on, with no event at all.
#[tokio::test]
async fn a_session_marked_lost_while_its_node_was_cut_off_comes_back_with_no_event_if_the_node_is_back_in_time() {
    const WAIT: Duration = Duration::from_secs(30);
    let redis = crate::support_redis::RedisServer::start();
    let relay = crate::support_proxy::Relay::start(([127, 0, 0, 1], redis.port).into());
    let survivor = redis_webhook_node_lost_after(&redis, Duration::from_secs(1), PURGE_OFTEN, WAIT).await;
    let receiver = Receiver::start().await;
    let token = survivor.token("1", "47");
    let relayed = format!("redis://{}", relay.addr);
    let (doomed, tv, _dir, player) = live_on_a_doomed_node(&relayed, WAIT, &survivor, &receiver, &token).await;
    webhook_to(&doomed.api(), "1", &receiver.url).await;
    let playing = player.play_in_background(Duration::from_secs(12));
    relay.hold();
    // The survivor's purge marks it lost once the node's liveness key ran out.
    let pool = drisc::domain::PoolKey::from_ids("1", "47", "o");
    let id = drisc::domain::SessionId::parse(&tv.session_id).unwrap();
    let record = || -> Option<String> {
        redis.cmd(&[
            "HGET",
            &drisc::store::redis::keys::customer(&pool),
            &drisc::store::redis::keys::compact(id),
        ])
    };
    let marked_by = Instant::now() + Duration::from_secs(10);
    while !record().is_some_and(|r| r.starts_with("x|")) {
        assert!(Instant::now() < marked_by, "not marked lost: {:?}", record());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay.release();

    let (pings, told, _player) = playing.await.expect("the player's task");
    assert_eq!(told, None, "the player was disturbed");
    assert!(pings > 10, "{pings}");
    assert!(
        record().is_some_and(|r| r.starts_with("l|")),
        "put back: {:?}",
        record()
    );
    assert_eq!(
        survivor.create(&token, json!({"offerId": "o"})).await.status(),
        409,
        "it holds its slot again"
    );
    let about: Vec<Value> = receiver
        .deliveries()
        .iter()
        .filter(|d| d.session_id().as_deref() == Some(tv.session_id.as_str()))
        .map(Delivery::json)
        .collect();
    assert!(about.is_empty(), "{about:?}");
    receiver.stop();
    survivor.stop().await;
}

/// Two nodes purge; a session granted on one and never connected is reported
/// ended once, by whichever node's round met it, with nothing else happening.
#[tokio::test]
async fn a_session_granted_and_never_connected_is_reported_ended_once_by_the_purge() {
    let redis = crate::support_redis::RedisServer::start();
    let (a, b) = (redis_webhook_node(&redis).await, redis_webhook_node(&redis).await);
    let receiver = Receiver::start().await;
    for node in [&a, &b] {
        node.put_offer("1", "o", 1, &[]).await;
        webhook_to(node, "1", &receiver.url).await;
    }
    let token = a.token("1", "8");
    let tv = a.create_ok(&token, "o", "TV").await;
    let is_end =
        |d: &Delivery| d.session_id().as_deref() == Some(tv.session_id.as_str()) && d.json()["type"] == "session.ended";
    receiver
        .wait_for("the never-connected session ended", |d| d.iter().any(is_end))
        .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let ended: Vec<Value> = receiver
        .deliveries()
        .iter()
        .filter(|d| is_end(d))
        .map(Delivery::json)
        .collect();
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(ended[0]["data"]["cause"], "connect_timeout");
    receiver.stop();
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_session_granted_on_one_node_and_never_connected_is_reported_ended_by_the_next_admission() {
    let redis = crate::support_redis::RedisServer::start();
    let a = redis_webhook_node_with(&redis, Duration::from_secs(1), PURGE_RARELY).await;
    let b = redis_webhook_node_with(&redis, Duration::from_secs(1), PURGE_RARELY).await;
    let receiver = Receiver::start().await;
    for node in [&a, &b] {
        node.put_offer("1", "o", 1, &[]).await;
    }
    webhook_to(&b, "1", &receiver.url).await;
    let token = a.token("1", "7");
    // Granted on A; no player ever connects: it dies in Redis after connect_timeout (1 s).
    let tv = a.create_ok(&token, "o", "TV").await;
    create_until_granted(&b, &token, Duration::from_secs(5)).await;
    let got = receiver
        .wait_for("the never-connected session ended", |d| {
            d.iter()
                .any(|d| d.session_id().as_deref() == Some(tv.session_id.as_str()))
        })
        .await;
    let ended = got
        .iter()
        .find(|d| d.session_id().as_deref() == Some(tv.session_id.as_str()))
        .unwrap()
        .json();
    assert_eq!(ended["type"], "session.ended");
    assert_eq!(ended["data"]["cause"], "connect_timeout");
    receiver.stop();
    a.stop().await;
    b.stop().await;
}

/// The attach script (a player connecting) deletes the customer's dead records
/// as the admit script does, and its node reports them: here a session granted on
/// A (1 s to connect) and never connected dies in Redis, and the player of a
/// session granted on B (30 s to connect) connecting afterwards is what meets it.
#[tokio::test]
async fn a_dead_session_met_by_another_players_connection_is_reported_ended_once() {
    let redis = crate::support_redis::RedisServer::start();
    let a = redis_webhook_node_with(&redis, Duration::from_secs(1), PURGE_RARELY).await;
    let b = redis_webhook_node_with(&redis, Duration::from_secs(30), PURGE_RARELY).await;
    let receiver = Receiver::start().await;
    for node in [&a, &b] {
        node.put_offer("1", "o", 2, &[]).await;
    }
    webhook_to(&b, "1", &receiver.url).await;
    let token = a.token("1", "7");
    let tv = a.create_ok(&token, "o", "TV").await;
    let phone = b.create_ok(&token, "o", "Phone").await;
    // TV's second to connect passes; nothing admits for this customer afterwards.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _player = crate::players::connect_ok(&phone.endpoint).await;
    let got = receiver
        .wait_for("the never-connected session ended", |d| {
            d.iter().any(|d| {
                d.session_id().as_deref() == Some(tv.session_id.as_str()) && d.json()["type"] == "session.ended"
            })
        })
        .await;
    let ended = got
        .iter()
        .filter(|d| d.session_id().as_deref() == Some(tv.session_id.as_str()) && d.json()["type"] == "session.ended")
        .map(|d| d.json())
        .collect::<Vec<_>>();
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(ended[0]["data"]["cause"], "connect_timeout");
    assert_eq!(ended[0]["data"]["sessionName"], "TV");
    // Phone lives on: its connection was granted, not ended.
    assert!(
        !got.iter().any(
            |d| d.session_id().as_deref() == Some(phone.session_id.as_str()) && d.json()["type"] == "session.ended"
        )
    );
    receiver.stop();
    a.stop().await;
    b.stop().await;
}

/// A receiver that is down fails every waiting event at each retry, and a burst
/// past the cap is refused a batch at a time: the real binary's log gets one line
/// per kind per 10 s with the count, not one per event or per batch (it had one
/// per event, which could crowd every other line out of the log's bounded buffer).
#[tokio::test]
async fn a_receiver_down_and_a_full_outbox_log_a_line_per_kind_not_per_event() {
    let dir = tempfile::tempdir().unwrap();
    let options = ProcessOptions::default()
        .env("DRISC__LOG__FORMAT", "json")
        .env("DRISC__WEBHOOKS__ALLOW_PRIVATE_TARGETS", "true")
        .env("DRISC__WEBHOOKS__OUTBOX_CAP", "20")
        .env("DRISC__WEBHOOKS__MAX_ATTEMPTS", "2")
        .env("DRISC__WEBHOOKS__RETRY_BASE", "100ms")
        .env("DRISC__WEBHOOKS__RETRY_MAX", "100ms")
        .env("DRISC__WEBHOOKS__POLL_INTERVAL", "50ms")
        .env("DRISC__EVENTS__OUTBOX_GATHER", "0s")
        .env("DRISC__LIMITS__ENABLED", "false");
    let server = ServerProcess::start(dir.path(), options);
    let api = server.api();
    let closed = closed_address();
    api.put_offer("1", "o", 1, &[]).await;
    webhook_to(&api, "1", &format!("http://{closed}/hook")).await;
    let token = api.token("1", "42");
    // 3 events a session (granted, kicked, ended): 60 for room for 20.
    for i in 0..20 {
        let granted = api.create_ok(&token, "o", &format!("S{i}")).await;
        api.end_session(&token, &granted.session_id).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let metrics = metrics_text(&api).await;
        let dead = counter(&metrics, "drisc_webhook_deliveries_total{outcome=\"dead_lettered\"}");
        let refused = counter(&metrics, "drisc_session_events_dropped_total{reason=\"outbox_full\"}");
        if dead >= 20 && refused >= 40 {
            break metrics;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(counter(&metrics, "drisc_webhook_deliveries_total{outcome=\"failed\"}") >= 20);
    // Each kind's lines, and the counts they give, which must add up to the
    // metric's once the 10 s after the first line are over: a burst's rest is
    // said then, with no event after it to say it.
    let kinds = [
        (
            "webhook deliveries failed; each will retry",
            "failed",
            "drisc_webhook_deliveries_total{outcome=\"failed\"}",
        ),
        (
            "webhook events dead-lettered",
            "dead_lettered",
            "drisc_webhook_deliveries_total{outcome=\"dead_lettered\"}",
        ),
        (
            "webhook outbox full",
            "refused",
            "drisc_session_events_dropped_total{reason=\"outbox_full\"}",
        ),
    ];
    let logged = |lines: &[String], words: &str, field: &str| -> (usize, u64) {
        let mine: Vec<&String> = lines.iter().filter(|l| l.contains(words)).collect();
        let sum = mine.iter().map(|l| logged_count(l, field)).sum();
        (mine.len(), sum)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let lines = loop {
        let lines = server.output();
        let metrics = metrics_text(&api).await;
        let said_all = kinds
            .iter()
            .all(|(words, field, series)| logged(&lines, words, field).1 == counter(&metrics, series));
        if said_all {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "the log's counts never added up to the metrics:\n{metrics}\n{}",
            lines.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for (words, field, _) in kinds {
        let (n, sum) = logged(&lines, words, field);
        // The first at once; the rest once 10 s have passed.
        assert!((1..=2).contains(&n), "{n} lines of {words:?}:\n{}", lines.join("\n"));
        assert!(sum > 0, "{words:?}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"failed\":") && l.contains("\"publisher\":\"1\"")),
        "the line tells the latest's details"
    );
}

#[tokio::test]
async fn a_start_that_restores_more_sessions_than_the_outbox_holds_says_so_for_that_publisher() {
    let dir = tempfile::tempdir().unwrap();
    let options = || {
        ProcessOptions::default()
            .env("DRISC__WEBHOOKS__ALLOW_PRIVATE_TARGETS", "true")
            .env("DRISC__WEBHOOKS__OUTBOX_CAP", "2")
            .env("DRISC__LIMITS__ENABLED", "false")
    };
    let mut first = ServerProcess::start(dir.path(), options());
    let api = first.api();
    let closed = closed_address();
    let url = format!("http://{closed}/hook");
    for publisher in ["1", "2", "3", "4"] {
        api.put_offer(publisher, "o", 5, &[]).await;
    }
    // "1" wants every type; "2" wants grants only; "3" has no webhook; "4" has
    // one of each kind but holds no more sessions than the cap.
    webhook_to(&api, "1", &url).await;
    let granted_only = json!({"url": url, "secret": SECRET, "events": ["session.granted"]});
    assert_eq!(put_webhook(&api, "2", granted_only).await.status(), 200);
    webhook_to(&api, "4", &url).await;
    for (publisher, sessions) in [("1", 3), ("2", 3), ("3", 3), ("4", 2)] {
        let token = api.token(publisher, "42");
        for i in 0..sessions {
            api.create_ok(&token, "o", &format!("S{i}")).await;
        }
    }
    first.signal("TERM");
    assert!(
        first.wait_exit(Duration::from_secs(30)).is_some(),
        "the first server stops"
    );

    let second = ServerProcess::start(dir.path(), options());
    let lines = second
        .output_once(|lines| lines.iter().any(|l| l.contains("restored as detached")))
        .await;
    assert!(
        lines.iter().any(|l| l.contains("restored=11")),
        "every session is back:\n{}",
        lines.join("\n")
    );
    let warned: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("webhooks.outbox_cap") && l.contains("WARN"))
        .collect();
    assert_eq!(
        warned.len(),
        1,
        "one warning, for publisher 1 alone:\n{}",
        lines.join("\n")
    );
    for words in ["publisher=1", "restored=3", "outbox_cap=2"] {
        assert!(warned[0].contains(words), "{words} in {}", warned[0]);
    }
}
