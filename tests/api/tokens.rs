//! Tokens from real identity providers (aud, iss, nbf, lifetimes, JWKS), bounded
//! tokens, and secrets kept out of files others can read, of `check-config` and
//! of the logs.

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::helpers::{
    TestApp, base64_url, customer_claims, customer_token, ec_signing_key, eventually, exp_in, expect_error, fixture,
    granted, rsa_signing_key, sign_dev, spawn_app, spawn_app_with,
};
use crate::players::connect_ok;
use crate::support_process::{ProcessOptions, ServerProcess};

fn body() -> Value {
    json!({"offerId": "S1", "sessionName": "TV"})
}

/// Claims naming publisher 1 and customer 42, with `extra` merged in.
fn claims_with(extra: Value) -> Value {
    let mut claims = customer_claims("1", "42");
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    claims
}

fn dev_token(extra: Value) -> String {
    sign_dev(claims_with(extra))
}

/// A create that must be refused with 401, whose message must mention `word`.
async fn refused(app: &TestApp, token: &str, word: &str) {
    let body = expect_error(app.create(token, body()).await, 401, "Unauthorized").await;
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(word), "the message should say why ({word}): {message}");
}

/// A create that must be granted; the session is ended at once, so the next
/// create of the same customer has its slot.
async fn accepted(app: &TestApp, token: &str) {
    let session = granted(app.create(token, body()).await).await;
    let ended = app.end_session(token, &session.session_id).await;
    assert_eq!(ended.status(), 204);
}

#[tokio::test]
async fn a_token_with_an_aud_is_accepted_when_no_audience_is_configured() {
    let app = spawn_app().await;
    accepted(&app, &dev_token(json!({"aud": "https://api.example.com"}))).await;
    accepted(&app, &dev_token(json!({"aud": ["account", "player"]}))).await;
    app.stop().await;
}

#[tokio::test]
async fn with_an_audience_configured_a_missing_or_wrong_aud_is_401_and_a_listed_one_is_accepted() {
    let app = spawn_app_with(|s| s.auth.audience = vec!["drisc".into(), "drisc-staging".into()]).await;
    refused(&app, &dev_token(json!({})), "aud").await;
    refused(&app, &dev_token(json!({"aud": "another-api"})), "aud").await;
    accepted(&app, &dev_token(json!({"aud": "drisc"}))).await;
    accepted(&app, &dev_token(json!({"aud": ["another-api", "drisc-staging"]}))).await;
    app.stop().await;
}

#[tokio::test]
async fn with_an_issuer_configured_a_missing_or_wrong_iss_is_401_and_a_listed_one_is_accepted() {
    let app = spawn_app_with(|s| s.auth.issuer = vec!["https://idp.example.com/".into()]).await;
    refused(&app, &dev_token(json!({})), "iss").await;
    refused(&app, &dev_token(json!({"iss": "https://evil.example.com/"})), "iss").await;
    accepted(&app, &dev_token(json!({"iss": "https://idp.example.com/"}))).await;
    app.stop().await;
}

#[tokio::test]
async fn a_token_not_valid_yet_is_401_and_one_within_the_leeway_is_accepted() {
    let app = spawn_app_with(|s| s.auth.leeway = Duration::from_secs(30)).await;
    refused(&app, &dev_token(json!({"nbf": exp_in(300)})), "nbf").await;
    accepted(&app, &dev_token(json!({"nbf": exp_in(10)}))).await;
    app.stop().await;
}

#[tokio::test]
async fn a_token_living_longer_than_the_maximum_lifetime_is_401() {
    let app = spawn_app_with(|s| s.auth.max_token_lifetime = Duration::from_secs(3600)).await;
    let now = exp_in(0);
    refused(&app, &dev_token(json!({"iat": now, "exp": now + 7200})), "lifetime").await;
    // Without iat, what is left of the token counts.
    refused(&app, &dev_token(json!({"exp": now + 86_400})), "lifetime").await;
    accepted(&app, &dev_token(json!({"iat": now, "exp": now + 600}))).await;
    app.stop().await;
}

#[tokio::test]
async fn an_oversized_customer_token_is_401_and_says_why() {
    let app = spawn_app().await;
    // Validly signed, but padded past the 8 KiB default: refused for its size alone.
    let padded = dev_token(json!({"padding": "x".repeat(9 * 1024)}));
    refused(&app, &padded, "longer than").await;
    // Over max_token_bytes but under server.max_header_bytes (16 KiB, which gets 431).
    refused(&app, &"a".repeat(12 * 1024), "longer than").await;
    app.stop().await;
}

#[tokio::test]
async fn an_oversized_session_token_is_refused_at_the_websocket() {
    let app = spawn_app().await;
    let response = app
        .http
        .get(app.url(&format!("/ws?token={}", "a".repeat(3000))))
        .send()
        .await
        .unwrap();
    let body = expect_error(response, 401, "Unauthorized").await;
    assert!(body["message"].as_str().unwrap().contains("longer than"), "{body}");
    app.stop().await;
}

// --- JWKS --------------------------------------------------------------------

/// The public JWK of a signing key, under `kid`.
fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Value {
    let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
    jwk.common.key_id = Some(kid.into());
    serde_json::to_value(jwk).unwrap()
}

/// An HMAC key in a JWKS (`kty: oct`).
fn oct_jwk(secret: &str, kid: &str) -> Value {
    let k = base64_url(secret);
    json!({"kty": "oct", "kid": kid, "alg": "HS256", "k": k})
}

fn sign_kid(alg: Algorithm, key: &EncodingKey, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn hs_kid(secret: &str, kid: &str, publisher: &str) -> String {
    sign_kid(
        Algorithm::HS256,
        &EncodingKey::from_secret(secret.as_bytes()),
        kid,
        &customer_claims(publisher, "42"),
    )
}

/// A JWKS served over HTTP on loopback, as an identity provider would, counting
/// how often it is fetched. Every answer closes its connection, so once the server
/// is stopped nothing can reach it.
struct JwksServer {
    url: String,
    keys: Arc<Mutex<Value>>,
    hits: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl JwksServer {
    async fn start(keys: Vec<Value>) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let keys = Arc::new(Mutex::new(json!({"keys": keys})));
        let hits = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let (k, h, d) = (keys.clone(), hits.clone(), down.clone());
        // A stand-in identity provider, not the server: nothing to describe in /openapi.json.
        #[expect(clippy::disallowed_methods, reason = "a test's own JWKS server")]
        let router = Router::new().route(
            "/jwks.json",
            get(move || {
                let (k, h, d) = (k.clone(), h.clone(), d.clone());
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    let status = if d.load(Ordering::SeqCst) {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    };
                    let body = k.lock().unwrap().to_string();
                    (status, [(header::CONNECTION, "close")], body).into_response()
                }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        JwksServer {
            url,
            keys,
            hits,
            down,
            task,
        }
    }

    fn publish(&self, keys: Vec<Value>) {
        *self.keys.lock().unwrap() = json!({"keys": keys});
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Unreachable from now on: connections are refused (and any straggler gets 503).
    fn stop(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.task.abort();
    }
}

#[tokio::test]
async fn a_publisher_jwks_file_verifies_tokens_with_the_key_its_kid_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let jwks = json!({"keys": [jwk(&rsa_signing_key(), Algorithm::RS256, "rsa-1"), jwk(&ec_signing_key(), Algorithm::ES256, "ec-1")]});
    std::fs::write(&path, jwks.to_string()).unwrap();
    // No server-wide key: only the publisher's JWKS can verify anything.
    let app = spawn_app_with(|s| s.auth.customer_key = "".into()).await;
    app.put_publisher("9", json!({"jwksUri": format!("file://{}", path.display())}))
        .await;

    let claims = customer_claims("9", "42");
    accepted(&app, &sign_kid(Algorithm::RS256, &rsa_signing_key(), "rsa-1", &claims)).await;
    accepted(&app, &sign_kid(Algorithm::ES256, &ec_signing_key(), "ec-1", &claims)).await;
    // The kid chooses the key: the RSA signature does not verify with the EC key.
    refused(
        &app,
        &sign_kid(Algorithm::RS256, &rsa_signing_key(), "ec-1", &claims),
        "signature",
    )
    .await;
    // The key chooses the algorithm: an HMAC token naming the RSA key is refused.
    let public_pem = fixture("rsa-public.pem");
    let confused = sign_kid(
        Algorithm::HS256,
        &EncodingKey::from_secret(public_pem.as_bytes()),
        "rsa-1",
        &claims,
    );
    refused(&app, &confused, "signature").await;
    refused(
        &app,
        &sign_kid(Algorithm::RS256, &rsa_signing_key(), "nobody", &claims),
        "kid",
    )
    .await;

    // The admin API shows the URI and refuses a second kind of key or plain http.
    let view: Value = app
        .admin(reqwest::Method::GET, "/publishers/9", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["jwksUri"], format!("file://{}", path.display()));
    let both = app
        .admin(
            reqwest::Method::PUT,
            "/publishers/9",
            Some(json!({"verificationKey": "a-secret"})),
        )
        .await;
    expect_error(both, 400, "InvalidRequest").await;
    let plain = app
        .admin(
            reqwest::Method::PUT,
            "/publishers/9",
            Some(json!({"jwksUri": "http://idp.example.com/jwks.json"})),
        )
        .await;
    expect_error(plain, 400, "InvalidRequest").await;
    app.stop().await;
}

#[tokio::test]
async fn a_server_wide_jwks_over_http_picks_up_a_rotated_key_after_an_unknown_kid() {
    let idp = JwksServer::start(vec![oct_jwk("first-secret", "k1")]).await;
    let url = idp.url.clone();
    let app = spawn_app_with(|s| {
        s.auth.jwks_uri = url;
        s.auth.jwks_min_refresh = Duration::from_secs(1);
        // The poll below fails (401) until the re-fetch: not an attack to block.
        s.limits.failed_auth_burst = 1_000;
    })
    .await;
    accepted(&app, &hs_kid("first-secret", "k1", "1")).await;
    assert_eq!(idp.hits(), 1);
    // The development secret no longer verifies anything: the JWKS replaced it.
    refused(&app, &app.token("1", 42), "signature").await;

    idp.publish(vec![oct_jwk("first-secret", "k1"), oct_jwk("second-secret", "k2")]);
    let rotated = hs_kid("second-secret", "k2", "1");
    eventually("the rotated key is fetched", || async {
        app.create(&rotated, json!({"offerId": "S2", "sessionName": "TV"}))
            .await
            .status()
            == 200
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn made_up_kids_make_the_server_fetch_the_jwks_at_most_once_per_min_refresh() {
    let idp = JwksServer::start(vec![oct_jwk("first-secret", "k1")]).await;
    let url = idp.url.clone();
    let app = spawn_app_with(|s| s.auth.jwks_uri = url).await;
    accepted(&app, &hs_kid("first-secret", "k1", "1")).await;
    for i in 0..20 {
        refused(&app, &hs_kid("first-secret", &format!("made-up-{i}"), "1"), "kid").await;
    }
    assert!(idp.hits() <= 2, "{} fetches for 20 made-up kids", idp.hits());
    app.stop().await;
}

#[tokio::test]
async fn cached_jwks_keys_keep_verifying_while_the_jwks_server_is_down() {
    let idp = JwksServer::start(vec![oct_jwk("first-secret", "k1")]).await;
    let url = idp.url.clone();
    let app = spawn_app_with(|s| {
        s.auth.jwks_uri = url;
        s.auth.jwks_cache_ttl = Duration::from_millis(200);
        s.auth.jwks_min_refresh = Duration::from_secs(1);
    })
    .await;
    let token = hs_kid("first-secret", "k1", "1");
    accepted(&app, &token).await;
    idp.stop();
    // Past the cache's lifetime: the server tries to fetch again, fails, and goes on
    // with the keys it has.
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..3 {
        let response = app.create(&token, json!({"offerId": "S1", "sessionName": "TV"})).await;
        assert_ne!(response.status(), 401, "{}", response.text().await.unwrap());
        assert_ne!(response.status(), 503);
    }
    app.stop().await;
}

#[tokio::test]
async fn a_jwks_never_fetched_and_unreachable_is_503_not_a_bad_token() {
    // A loopback port that was free a moment ago, and that nothing listens on now.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = spawn_app_with(|s| s.auth.jwks_uri = format!("http://127.0.0.1:{port}/jwks.json")).await;
    expect_error(
        app.create(&hs_kid("first-secret", "k1", "1"), body()).await,
        503,
        "ServiceUnavailable",
    )
    .await;
    app.stop().await;
}

// --- secrets -----------------------------------------------------------------

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn the_data_directory_is_0700_and_the_database_files_0600() {
    let root = tempfile::tempdir().unwrap();
    let fresh = root.path().join("fresh");
    let app = spawn_app_with(|s| s.storage.data_dir = fresh.clone()).await;
    app.create_ok(&app.token("1", 42), "S1", "TV").await;
    assert_eq!(mode(&fresh), 0o700);
    for file in ["drisc.db", "drisc.db-wal", "drisc.db-shm"] {
        let path = fresh.join(file);
        assert!(path.exists(), "{file} exists while the server runs");
        assert_eq!(mode(&path), 0o600, "{file}");
    }
    app.stop().await;

    // Left readable by an earlier version or by hand: tightened at start.
    let old = root.path().join("old");
    std::fs::create_dir(&old).unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(old.join("drisc.db"), b"").unwrap();
    std::fs::set_permissions(old.join("drisc.db"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let app = spawn_app_with(|s| s.storage.data_dir = old.clone()).await;
    assert_eq!(mode(&old), 0o700);
    assert_eq!(mode(&old.join("drisc.db")), 0o600);
    app.stop().await;
}

#[test]
fn check_config_prints_no_secret() {
    let secrets = [
        ("DRISC__AUTH__CUSTOMER_KEY", "customer-key-s3cret-1"),
        ("DRISC__AUTH__ADMIN_KEY", "admin-key-s3cret-2"),
        ("DRISC__AUTH__SESSION_SECRET", "session-s3cret-3"),
        (
            "DRISC__STORAGE__REDIS_URL",
            "redis://:redis-pw-s3cret-4@127.0.0.1:6379/",
        ),
        (
            "DRISC__STORAGE__POSTGRES_URL",
            "postgres://drisc:pg-pw-s3cret-5@127.0.0.1:5432/drisc",
        ),
    ];
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_drisc"));
    command.arg("check-config").env_remove("RUST_LOG");
    for (key, value) in secrets {
        command.env(key, value);
    }
    let output = command.output().expect("drisc check-config runs");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{printed}");
    assert!(printed.contains("REDACTED"), "the settings are printed: {printed}");
    for secret in ["s3cret-1", "s3cret-2", "s3cret-3", "s3cret-4", "s3cret-5"] {
        assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
    }
}

#[tokio::test]
async fn at_trace_level_the_real_server_logs_neither_customer_nor_session_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), ProcessOptions::default().env("DRISC__LOG__LEVEL", "trace"));
    let api = server.api();
    let customer_token = customer_token("1", 42);
    let granted = api.create_ok(&customer_token, "S1", "TV").await;
    let session_token = granted.body["token"].as_str().unwrap().to_owned();
    let mut player = connect_ok(&granted.endpoint).await;
    player.send("FINISHED").await;
    player.expect_close(1000).await;
    // A refused token is not logged either.
    let _ = api
        .http
        .get(server.url(&format!("/ws?token={session_token}x")))
        .send()
        .await
        .unwrap();
    // Let the server log what it logs after the socket closed.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let output = server.output_once(|log| log.iter().any(|l| l.contains("/ws"))).await;
    assert!(
        output.iter().any(|l| l.contains("TRACE") || l.contains("DEBUG")),
        "the server logs at trace level"
    );
    assert!(output.iter().any(|l| l.contains("/ws")), "requests are logged by path");
    // Any fragment of a token (each of its three parts) would be a leak.
    for token in [&customer_token, &session_token] {
        for part in token.split('.').filter(|p| p.len() > 20) {
            let leaks: Vec<&String> = output.iter().filter(|l| l.contains(part)).collect();
            assert!(leaks.is_empty(), "a token was logged:\n{leaks:#?}");
        }
    }
}
