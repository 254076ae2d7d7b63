//! Crash safety of the embedded default: the real binary is killed with SIGKILL
//! (nothing runs at exit) and started again on the same data directory. The
//! session journal must have kept the held sessions, their slots still counted,
//! and forgotten the ones that ended.
//!
//! Instead of sleeping "long enough" for the journal, the tests read the database
//! the server writes (SQLite in WAL mode takes a reader beside the server) until
//! the change they wait for is there, within a bounded time.

use std::path::Path;
use std::time::{Duration, Instant};

use drisc::domain::ports::SessionArchive;
use drisc::store::{PostgresSettings, SqliteSettings};
use jsonwebtoken::Algorithm;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{self, ADMIN_KEY, DEV_SECRET, Player, Seen, granted};
use crate::support_postgres::PgServer;
use crate::support_process::{ProcessOptions, ServerProcess};

/// The real server, with what a player and an operator do against it.
struct Node {
    server: ServerProcess,
    http: reqwest::Client,
}

impl Node {
    fn start(dir: &Path, options: ProcessOptions) -> Node {
        Node {
            server: ServerProcess::start(dir, options),
            http: reqwest::Client::new(),
        }
    }

    async fn create(&self, token: &str, offer: &str, name: &str) -> reqwest::Response {
        let body = json!({"offerId": offer, "sessionName": name});
        self.post("/sessions", token, body).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.server.url(path))
            .bearer_auth(token)
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> reqwest::Response {
        let mut request = self
            .http
            .request(method, self.server.url(&format!("/admin/v1{path}")))
            .bearer_auth(ADMIN_KEY);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }

    /// The session's state as the admin API shows it; `None` if it is not held.
    async fn state(&self, session_id: &str) -> Option<String> {
        let response = self.admin(Method::GET, &format!("/sessions/{session_id}"), None).await;
        match response.status() {
            StatusCode::NOT_FOUND => None,
            StatusCode::OK => {
                let body: Value = response.json().await.unwrap();
                Some(body["state"].as_str().expect("state").to_owned())
            }
            other => panic!("GET /admin/v1/sessions/{session_id}: {other}"),
        }
    }

    async fn held(&self) -> u64 {
        let health: Value = self
            .http
            .get(self.server.url("/health"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        health["sessions"].as_u64().expect("sessions")
    }

    /// The endpoint a player cached from the previous process, reaching this one
    /// (it listens on another port: behind a load balancer the URL would not change).
    fn reach(&self, endpoint: &str, previous: &Node) -> String {
        endpoint.replace(
            &format!(":{}/", previous.server.port),
            &format!(":{}/", self.server.port),
        )
    }
}

fn token(customer: &str) -> String {
    helpers::sign_hs(DEV_SECRET, Algorithm::HS256, helpers::customer_claims("p", customer))
}

/// The session ids in the server's database, sorted.
async fn journaled(db: &dyn SessionArchive) -> Vec<String> {
    let mut ids: Vec<String> = db
        .held()
        .await
        .unwrap()
        .into_iter()
        .map(|(_, s)| s.id.to_string())
        .collect();
    ids.sort();
    ids
}

/// Waits (at most 10 s) until the database holds exactly the sessions `expected`.
async fn until_journaled(db: &dyn SessionArchive, expected: &[&str]) {
    let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    expected.sort();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ids = journaled(db).await;
        if ids == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the journal holds {ids:?}, not {expected:?}, after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn open_db(dir: &Path) -> SqliteSettings {
    SqliteSettings::open(&dir.join("drisc.db")).await.unwrap()
}

async fn connect_ok(endpoint: &str) -> Player {
    let mut player = Player::connect(endpoint).await;
    player.request_ok().await;
    player
}

async fn connect_expired(endpoint: &str) {
    let mut player = Player::connect(endpoint).await;
    player.send("REQUESTED").await;
    player.expect("EXPIRED").await;
    assert_eq!(player.next().await, Seen::Closed(Some(4003)));
}

#[tokio::test]
async fn a_live_session_survives_kill_9_its_slot_still_counted_and_its_cached_endpoint_gets_ok() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Node::start(dir.path(), ProcessOptions::default());
    let db = open_db(&first.server.data_dir).await;
    let token = token("c1");
    let tv = granted(first.create(&token, "S1", "TV").await).await;
    let _tv_socket = connect_ok(&tv.endpoint).await;
    until_journaled(&db, &[&tv.session_id]).await;

    let pid = first.server.pid();
    first.server.kill9();
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the first server is gone");
    let second = Node::start(dir.path(), ProcessOptions::default());
    assert!(
        second
            .server
            .output()
            .iter()
            .any(|l| l.contains("restored as detached")),
        "the start says what it brought back"
    );
    assert_eq!(second.held().await, 1);
    assert_eq!(second.state(&tv.session_id).await.as_deref(), Some("detached"));
    // The default limit is 1: the slot is still the TV's, another device waits.
    let phone = second.create(&token, "S1", "Phone").await;
    assert_eq!(phone.status(), StatusCode::CONFLICT, "{}", phone.text().await.unwrap());
    // The TV reconnects with the endpoint it cached and plays on.
    let mut tv_again = connect_ok(&second.reach(&tv.endpoint, &first)).await;
    assert_eq!(second.state(&tv.session_id).await.as_deref(), Some("live"));
    assert_eq!(
        second.create(&token, "S1", "Phone").await.status(),
        StatusCode::CONFLICT
    );
    tv_again.send("FINISHED").await;
    tv_again.expect_close(1000).await;
    assert_eq!(second.create(&token, "S1", "Phone").await.status(), StatusCode::OK);
    db.close().await;
}

#[tokio::test]
async fn a_session_finished_before_kill_9_stays_ended_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Node::start(dir.path(), ProcessOptions::default());
    let db = open_db(&first.server.data_dir).await;
    let token = token("c2");
    let tv = granted(first.create(&token, "S1", "TV").await).await;
    let mut player = connect_ok(&tv.endpoint).await;
    until_journaled(&db, &[&tv.session_id]).await;
    player.send("FINISHED").await;
    player.expect_close(1000).await;
    until_journaled(&db, &[]).await;

    first.server.kill9();
    let second = Node::start(dir.path(), ProcessOptions::default());
    assert_eq!(second.held().await, 0);
    connect_expired(&second.reach(&tv.endpoint, &first)).await;
    assert_eq!(second.create(&token, "S1", "Phone").await.status(), StatusCode::OK);
    db.close().await;
}

#[tokio::test]
async fn a_session_that_expired_unattended_before_kill_9_is_not_brought_back() {
    let dir = tempfile::tempdir().unwrap();
    let options = || {
        ProcessOptions::default()
            .env("DRISC__LIVENESS__CONNECT_TIMEOUT", "1s")
            .env("DRISC__LIVENESS__SWEEP_INTERVAL", "200ms")
    };
    let mut first = Node::start(dir.path(), options());
    let db = open_db(&first.server.data_dir).await;
    let token = token("c3");
    // Granted, but its player never connects: the sweep reaps it after 1 s.
    let tv = granted(first.create(&token, "S1", "TV").await).await;
    until_journaled(&db, &[&tv.session_id]).await;
    until_journaled(&db, &[]).await;

    first.server.kill9();
    let second = Node::start(dir.path(), options());
    assert_eq!(second.held().await, 0);
    assert_eq!(second.create(&token, "S1", "Phone").await.status(), StatusCode::OK);
    db.close().await;
}

#[tokio::test]
async fn a_graceful_restart_keeps_the_sessions_the_journal_had_not_written_yet() {
    let dir = tempfile::tempdir().unwrap();
    // No periodic write in the test's time: only the flush at shutdown can save it.
    let options = || ProcessOptions::default().env("DRISC__STORAGE__JOURNAL_INTERVAL", "1h");
    let mut first = Node::start(dir.path(), options());
    let db = open_db(&first.server.data_dir).await;
    let token = token("c4");
    let tv = granted(first.create(&token, "S1", "TV").await).await;
    let mut player = connect_ok(&tv.endpoint).await;
    assert!(journaled(&db).await.is_empty());

    first.server.signal("TERM");
    assert_eq!(player.next().await, Seen::Closed(Some(1012)));
    let status = first.server.wait_exit(Duration::from_secs(15)).expect("drisc exits");
    assert!(status.success(), "{status}");
    assert_eq!(journaled(&db).await, vec![tv.session_id.clone()]);

    let second = Node::start(dir.path(), options());
    assert_eq!(
        second.create(&token, "S1", "Phone").await.status(),
        StatusCode::CONFLICT
    );
    let _tv = connect_ok(&second.reach(&tv.endpoint, &first)).await;
    db.close().await;
}

#[tokio::test]
async fn sessions_are_found_by_id_after_a_takeover_and_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Node::start(dir.path(), ProcessOptions::default());
    let db = open_db(&first.server.data_dir).await;
    let put = first
        .admin(
            Method::PUT,
            "/publishers/p/offers/S2",
            Some(json!({"sessionLimit": 2, "tags": []})),
        )
        .await;
    assert_eq!(put.status(), StatusCode::OK);
    let token = token("c5");
    let a = granted(first.create(&token, "S2", "A").await).await;
    let b = granted(first.create(&token, "S2", "B").await).await;
    let body = json!({"offerId": "S2", "sessionName": "C", "sessionId": a.session_id});
    let c = granted(first.post("/takeover", &token, body).await).await;
    assert_eq!(first.state(&a.session_id).await, None, "the victim is gone");
    assert_eq!(first.state(&c.session_id).await.as_deref(), Some("pending"));
    assert_eq!(first.held().await, 2);
    until_journaled(&db, &[&b.session_id, &c.session_id]).await;

    first.server.kill9();
    let second = Node::start(dir.path(), ProcessOptions::default());
    assert_eq!(second.held().await, 2);
    assert_eq!(second.state(&a.session_id).await, None);
    assert_eq!(second.state(&b.session_id).await.as_deref(), Some("detached"));
    assert_eq!(second.state(&c.session_id).await.as_deref(), Some("detached"));
    connect_expired(&second.reach(&a.endpoint, &first)).await;
    // Its owner gives C back; an operator kicks B.
    let given_back = second
        .http
        .delete(second.server.url(&format!("/sessions/{}", c.session_id)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(given_back.status(), StatusCode::NO_CONTENT);
    assert_eq!(second.state(&c.session_id).await, None);
    let kicked = second
        .admin(Method::DELETE, &format!("/sessions/{}", b.session_id), None)
        .await;
    assert_eq!(kicked.status(), StatusCode::NO_CONTENT);
    assert_eq!(second.state(&b.session_id).await, None);
    assert_eq!(second.held().await, 0);
    until_journaled(&db, &[]).await;
    db.close().await;
}

/// Memory sessions with PostgreSQL settings: the journal goes to PostgreSQL.
#[tokio::test]
async fn with_postgresql_settings_a_live_session_survives_kill_9_too() {
    let pg = PgServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let options = || {
        ProcessOptions::default()
            .env("DRISC__STORAGE__SETTINGS", "postgres")
            .env("DRISC__STORAGE__POSTGRES_URL", pg.url.clone())
    };
    let mut first = Node::start(dir.path(), options());
    let db = PostgresSettings::connect(&pg.url).await.unwrap();
    let token = token("c7");
    let tv = granted(first.create(&token, "S1", "TV").await).await;
    let _tv_socket = connect_ok(&tv.endpoint).await;
    until_journaled(&db, &[&tv.session_id]).await;

    first.server.kill9();
    let second = Node::start(dir.path(), options());
    assert_eq!(
        second.create(&token, "S1", "Phone").await.status(),
        StatusCode::CONFLICT
    );
    let mut tv_again = connect_ok(&second.reach(&tv.endpoint, &first)).await;
    tv_again.send("FINISHED").await;
    tv_again.expect_close(1000).await;
    until_journaled(&db, &[]).await;
    db.close().await;
}

/// With `storage.journal = false` a graceful restart saves and restores the
/// sessions as before the journal existed.
#[tokio::test]
async fn with_the_journal_off_a_graceful_restart_still_brings_the_sessions_back() {
    let app = helpers::spawn_app_with(|s| s.storage.journal = false).await;
    let token = app.token("p", "c6");
    let (tv, player) = helpers::live_player(&app, &token, "S1", "TV").await;
    let db = open_db(app.data_dir.path()).await;
    assert!(journaled(&db).await.is_empty(), "nothing is journaled");
    let app = app.restart().await;
    drop(player);
    assert_eq!(
        app.create(&token, json!({"offerId": "S1"})).await.status(),
        StatusCode::CONFLICT
    );
    let _tv = connect_ok(&tv.endpoint).await;
    db.close().await;
}
