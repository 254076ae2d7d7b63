//! Crash safety of the embedded default: the real binary is killed with SIGKILL
//! (nothing runs at exit) and started again on the same data directory. The
//! session journal must have kept the held sessions, their slots still counted,
//! and forgotten the ones that ended.
//!
//! Instead of sleeping "long enough" for the journal, the tests read the database
//! the server writes (SQLite in WAL mode takes a reader beside the server) until
//! the change they wait for is there, within a bounded time.

use std::ops::Deref;
use std::path::Path;
use std::time::{Duration, Instant};

use drisc::domain::ports::SessionArchive;
use drisc::store::{PostgresSettings, SqliteSettings};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{self, Api, customer_token, granted};
use crate::players::{Seen, connect_expired, connect_ok, endpoint_on, live_player};
use crate::support_postgres::PgServer;
use crate::support_process::{ProcessOptions, ServerProcess};

/// The real server, and a client of it.
struct Node {
    server: ServerProcess,
    api: Api,
}

impl Deref for Node {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Node {
    fn start(dir: &Path, options: ProcessOptions) -> Node {
        let server = ServerProcess::start(dir, options);
        let api = server.api();
        Node { server, api }
    }
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

/// The nice values of the threads of process `pid` named `name`.
fn nice_of_threads(pid: u32, name: &str) -> Vec<i64> {
    stat_field_of_threads(pid, name, 16)
}

/// The scheduling policy (0 normal, 5 `SCHED_IDLE`) of each thread named `name`.
fn policy_of_threads(pid: u32, name: &str) -> Vec<i64> {
    stat_field_of_threads(pid, name, 38)
}

/// A numeric field of /proc/<pid>/task/*/stat for each thread named `name`,
/// counted after the name (nice is the 17th, index 16; policy the 39th, index 38:
/// fields 19 and 41 of proc(5)).
fn stat_field_of_threads(pid: u32, name: &str, index: usize) -> Vec<i64> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        .filter_map(|stat| {
            // "tid (comm) state ppid …": the name is between the first "(" and the last ")".
            let (open, close) = (stat.find('(')?, stat.rfind(')')?);
            let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            (&stat[open + 1..close] == name).then(|| fields.get(index)?.parse().ok())?
        })
        .collect()
}

const SCHED_OTHER: i64 = 0;
const SCHED_IDLE: i64 = 5;

/// The journal's SQLite thread, the sweep and the log writer run at nice 19, so
/// their bursts of work take only the CPU admissions leave; not in `SCHED_IDLE`
/// (each shares a lock with the runtime: bench/analysis.md, "The tail, round
/// six"), which only the webhooks' delivery uses. The runtime's workers keep the
/// process's priority.
#[tokio::test]
async fn the_journal_writes_from_a_thread_at_the_lowest_priority() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), ProcessOptions::default());
    let db = open_db(&node.server.data_dir).await;
    let tv = node.create_ok(&customer_token("p", "c1"), "S1", "TV").await;
    until_journaled(&db, &[&tv.session_id]).await;
    let pid = node.server.pid();
    for lowered in ["drisc-journal", "drisc-jflush", "drisc-sweep", "drisc-log"] {
        assert_eq!(
            nice_of_threads(pid, lowered),
            vec![19],
            "one {lowered} thread, at nice 19"
        );
        assert_eq!(
            policy_of_threads(pid, lowered),
            vec![SCHED_OTHER],
            "{lowered} not in SCHED_IDLE"
        );
    }
    assert_eq!(policy_of_threads(pid, "drisc-webhooks"), vec![SCHED_IDLE]);
    // The others keep the process's own (a test run under `nice` starts it lower).
    let process = nice_of_threads(pid, "drisc");
    let workers = nice_of_threads(pid, "tokio-rt-worker");
    assert!(
        !workers.is_empty() && workers.iter().all(|nice| process.contains(nice)),
        "{workers:?} {process:?}"
    );
    assert!(
        policy_of_threads(pid, "tokio-rt-worker")
            .iter()
            .all(|p| *p == SCHED_OTHER),
        "the runtime's workers keep the normal policy"
    );
    db.close().await;
}

async fn open_db(dir: &Path) -> SqliteSettings {
    SqliteSettings::open(&dir.join("drisc.db")).await.unwrap()
}

#[tokio::test]
async fn a_live_session_survives_kill_9_its_slot_still_counted_and_its_cached_endpoint_gets_ok() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Node::start(dir.path(), ProcessOptions::default());
    let db = open_db(&first.server.data_dir).await;
    let token = customer_token("p", "c1");
    let tv = first.create_ok(&token, "S1", "TV").await;
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
    assert_eq!(second.session_state(&tv.session_id).await.as_deref(), Some("detached"));
    // The default limit is 1: the slot is still the TV's, another device waits.
    let phone = second
        .create(&token, json!({"offerId": "S1", "sessionName": "Phone"}))
        .await;
    assert_eq!(phone.status(), StatusCode::CONFLICT, "{}", phone.text().await.unwrap());
    // The TV reconnects with the endpoint it cached and plays on.
    let mut tv_again = connect_ok(&endpoint_on(&tv.endpoint, second.server.port)).await;
    assert_eq!(second.session_state(&tv.session_id).await.as_deref(), Some("live"));
    assert_eq!(
        second
            .create(&token, json!({"offerId": "S1", "sessionName": "Phone"}))
            .await
            .status(),
        StatusCode::CONFLICT
    );
    tv_again.send("FINISHED").await;
    tv_again.expect_close(1000).await;
    assert_eq!(
        second
            .create(&token, json!({"offerId": "S1", "sessionName": "Phone"}))
            .await
            .status(),
        StatusCode::OK
    );
    db.close().await;
}

/// A start does not write the sessions it restores again: their rows stay in the
/// journal, so a crash right after a restart brings them back once more.
#[tokio::test]
async fn a_session_survives_a_second_kill_9_right_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Node::start(dir.path(), ProcessOptions::default());
    let db = open_db(&first.server.data_dir).await;
    let token = customer_token("p", "c9");
    let tv = first.create_ok(&token, "S1", "TV").await;
    until_journaled(&db, &[&tv.session_id]).await;
    first.server.kill9();

    let mut second = Node::start(dir.path(), ProcessOptions::default());
    assert_eq!(second.session_state(&tv.session_id).await.as_deref(), Some("detached"));
    assert_eq!(journaled(&db).await, vec![tv.session_id.clone()]);
    second.server.kill9();

    let third = Node::start(dir.path(), ProcessOptions::default());
    assert_eq!(third.held().await, 1);
    assert_eq!(third.session_state(&tv.session_id).await.as_deref(), Some("detached"));
    let _tv_socket = connect_ok(&endpoint_on(&tv.endpoint, third.server.port)).await;
    assert_eq!(third.session_state(&tv.session_id).await.as_deref(), Some("live"));
    db.close().await;
}

#[tokio::test]
async fn a_session_finished_before_kill_9_stays_ended_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Node::start(dir.path(), ProcessOptions::default());
    let db = open_db(&first.server.data_dir).await;
    let token = customer_token("p", "c2");
    let tv = first.create_ok(&token, "S1", "TV").await;
    let mut player = connect_ok(&tv.endpoint).await;
    until_journaled(&db, &[&tv.session_id]).await;
    player.send("FINISHED").await;
    player.expect_close(1000).await;
    until_journaled(&db, &[]).await;

    first.server.kill9();
    let second = Node::start(dir.path(), ProcessOptions::default());
    assert_eq!(second.held().await, 0);
    connect_expired(&endpoint_on(&tv.endpoint, second.server.port)).await;
    assert_eq!(
        second
            .create(&token, json!({"offerId": "S1", "sessionName": "Phone"}))
            .await
            .status(),
        StatusCode::OK
    );
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
    let token = customer_token("p", "c3");
    // Granted, but its player never connects: the sweep reaps it after 1 s.
    let tv = first.create_ok(&token, "S1", "TV").await;
    until_journaled(&db, &[&tv.session_id]).await;
    until_journaled(&db, &[]).await;

    first.server.kill9();
    let second = Node::start(dir.path(), options());
    assert_eq!(second.held().await, 0);
    assert_eq!(
        second
            .create(&token, json!({"offerId": "S1", "sessionName": "Phone"}))
            .await
            .status(),
        StatusCode::OK
    );
    db.close().await;
}

#[tokio::test]
async fn a_graceful_restart_keeps_the_sessions_the_journal_had_not_written_yet() {
    let dir = tempfile::tempdir().unwrap();
    // No periodic write in the test's time: only the flush at shutdown can save it.
    let options = || ProcessOptions::default().env("DRISC__STORAGE__JOURNAL_INTERVAL", "1h");
    let mut first = Node::start(dir.path(), options());
    let db = open_db(&first.server.data_dir).await;
    let token = customer_token("p", "c4");
    let tv = first.create_ok(&token, "S1", "TV").await;
    let mut player = connect_ok(&tv.endpoint).await;
    assert!(journaled(&db).await.is_empty());

    first.server.signal("TERM");
    assert_eq!(player.next().await, Seen::Closed(Some(1012)));
    let status = first.server.wait_exit(Duration::from_secs(15)).expect("drisc exits");
    assert!(status.success(), "{status}");
    assert_eq!(journaled(&db).await, vec![tv.session_id.clone()]);

    let second = Node::start(dir.path(), options());
    assert_eq!(
        second
            .create(&token, json!({"offerId": "S1", "sessionName": "Phone"}))
            .await
            .status(),
        StatusCode::CONFLICT
    );
    let _tv = connect_ok(&endpoint_on(&tv.endpoint, second.server.port)).await;
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
    let token = customer_token("p", "c5");
    let a = first.create_ok(&token, "S2", "A").await;
    let b = first.create_ok(&token, "S2", "B").await;
    let body = json!({"offerId": "S2", "sessionName": "C", "sessionId": a.session_id});
    let c = granted(first.post("/takeover", &token, body).await).await;
    assert_eq!(first.session_state(&a.session_id).await, None, "the victim is gone");
    assert_eq!(first.session_state(&c.session_id).await.as_deref(), Some("pending"));
    assert_eq!(first.held().await, 2);
    until_journaled(&db, &[&b.session_id, &c.session_id]).await;

    first.server.kill9();
    let second = Node::start(dir.path(), ProcessOptions::default());
    assert_eq!(second.held().await, 2);
    assert_eq!(second.session_state(&a.session_id).await, None);
    assert_eq!(second.session_state(&b.session_id).await.as_deref(), Some("detached"));
    assert_eq!(second.session_state(&c.session_id).await.as_deref(), Some("detached"));
    connect_expired(&endpoint_on(&a.endpoint, second.server.port)).await;
    // Its owner gives C back; an operator kicks B.
    let given_back = second.end_session(&token, &c.session_id).await;
    assert_eq!(given_back.status(), StatusCode::NO_CONTENT);
    assert_eq!(second.session_state(&c.session_id).await, None);
    let kicked = second
        .admin(Method::DELETE, &format!("/sessions/{}", b.session_id), None)
        .await;
    assert_eq!(kicked.status(), StatusCode::NO_CONTENT);
    assert_eq!(second.session_state(&b.session_id).await, None);
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
    let token = customer_token("p", "c7");
    let tv = first.create_ok(&token, "S1", "TV").await;
    let _tv_socket = connect_ok(&tv.endpoint).await;
    until_journaled(&db, &[&tv.session_id]).await;

    first.server.kill9();
    let second = Node::start(dir.path(), options());
    assert_eq!(
        second
            .create(&token, json!({"offerId": "S1", "sessionName": "Phone"}))
            .await
            .status(),
        StatusCode::CONFLICT
    );
    let mut tv_again = connect_ok(&endpoint_on(&tv.endpoint, second.server.port)).await;
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
    let (tv, player) = live_player(&app, &token, "S1", "TV").await;
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
