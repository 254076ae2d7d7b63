//! What only the PostgreSQL settings repository has to do, against a real
//! PostgreSQL server on loopback: serve several nodes at once, survive restarts,
//! migrate an old database. What both settings databases do alike is held to
//! `settings_conformance.rs`.

use std::time::{Duration, Instant};

use drisc::domain::SessionState;
use drisc::domain::ports::{SessionArchive, SettingsRepo};
use drisc::domain::settings::{Publisher, UnknownOffers};
use drisc::store::PostgresSettings;
use tokio::task::JoinSet;

use crate::settings_conformance::{held, publisher, sorted};
use crate::support_postgres::PgServer;

pub async fn repo(server: &PgServer) -> PostgresSettings {
    PostgresSettings::connect(&server.url)
        .await
        .unwrap_or_else(|e| panic!("connecting to {}: {e:#}\nserver log:\n{}", server.url, server.log()))
}

#[tokio::test]
async fn concurrent_create_publisher_all_get_the_same_row() {
    let server = PgServer::start().await;
    // Two "nodes", each with its own pool, racing on first sight of a publisher.
    let nodes = [repo(&server).await, repo(&server).await];
    let mut racers = JoinSet::new();
    for i in 0..20u32 {
        let repo = nodes[i as usize % 2].clone();
        racers.spawn(async move {
            let mine = Publisher {
                default_session_limit: i,
                ..publisher("first-sight")
            };
            repo.create_publisher(&mine).await
        });
    }
    let mut seen = Vec::new();
    while let Some(result) = racers.join_next().await {
        seen.push(result.unwrap().expect("every racer succeeds"));
    }
    assert_eq!(seen.len(), 20);
    let stored = nodes[0].catalog("first-sight").await.unwrap().unwrap();
    assert!(
        seen.iter().all(|c| *c == stored),
        "racers read different rows: {seen:?}"
    );
    assert_eq!(nodes[1].list_publishers().await.unwrap().len(), 1);
    for node in &nodes {
        node.close().await;
    }
}

#[tokio::test]
async fn secrets_are_created_once_and_shared_across_connections() {
    let server = PgServer::start().await;
    let (one, two) = tokio::join!(repo(&server), repo(&server));

    let (a, b) = tokio::join!(one.secret("token-signing"), two.secret("token-signing"));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b);
    assert_eq!(a.len(), 64);
    assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));

    assert_eq!(one.secret("token-signing").await.unwrap(), a);
    let other = two.secret("another").await.unwrap();
    assert_ne!(other, a);
    one.close().await;
    two.close().await;

    // Still there for a node that connects later.
    let later = repo(&server).await;
    assert_eq!(later.secret("token-signing").await.unwrap(), a);
    assert_eq!(later.secret("another").await.unwrap(), other);
    later.close().await;
}

/// PostgreSQL is shared by the nodes of a cluster: each saved session goes to
/// exactly one of the nodes that take at once.
#[tokio::test]
async fn nodes_taking_saved_sessions_at_once_never_both_get_one() {
    let server = PgServer::start().await;
    let repo = repo(&server).await;
    let many: Vec<_> = (0..12_000).map(|n| held(n, SessionState::Live)).collect();
    repo.save(&many).await.unwrap();
    let other = PostgresSettings::connect(&server.url).await.unwrap();
    let (x, y) = tokio::join!(repo.take(), other.take());
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.len() + y.len(), many.len());
    let all: Vec<_> = x.into_iter().chain(y).collect();
    assert_eq!(sorted(all), sorted(many));
    repo.close().await;
    other.close().await;
}

#[tokio::test]
async fn concurrent_nodes_migrate_at_once() {
    let server = PgServer::start().await;
    let mut nodes = JoinSet::new();
    for _ in 0..8 {
        let url = server.url.clone();
        nodes.spawn(async move { PostgresSettings::connect(&url).await });
    }
    let mut repos = Vec::new();
    while let Some(result) = nodes.join_next().await {
        repos.push(result.unwrap().expect("every node starts"));
    }
    repos[0].put_publisher(&publisher("acme")).await.unwrap();
    for repo in &repos {
        assert_eq!(repo.list_publishers().await.unwrap(), vec![publisher("acme")]);
        repo.close().await;
    }
}

#[tokio::test]
async fn postgres_restarted_and_the_repository_reconnects() {
    let mut server = PgServer::start().await;
    let repo = repo(&server).await;
    repo.put_publisher(&publisher("acme")).await.unwrap();
    let secret = repo.secret("s").await.unwrap();
    // Warm several pooled connections, so the restart leaves broken ones behind.
    let (a, b, c) = tokio::join!(repo.catalog("acme"), repo.catalog("acme"), repo.list_publishers());
    a.unwrap();
    b.unwrap();
    c.unwrap();

    // While it is down, an operation fails promptly rather than hanging.
    server.stop();
    let began = Instant::now();
    assert!(repo.catalog("acme").await.is_err());
    assert!(
        began.elapsed() < Duration::from_secs(8),
        "an outage took {:?} to report",
        began.elapsed()
    );

    server.start_again();
    let deadline = Instant::now() + Duration::from_secs(5);
    let catalog = loop {
        match repo.catalog("acme").await {
            Ok(Some(catalog)) => break catalog,
            Ok(None) => panic!("the publisher is gone after the restart"),
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!(
                "no reconnect within 5 s after the restart: {e}\nserver log:\n{}",
                server.log()
            ),
        }
    };
    assert_eq!(catalog.publisher, publisher("acme"));
    assert_eq!(repo.secret("s").await.unwrap(), secret);

    // A restart while connected (no stop in between) is survived as well.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match repo.list_publishers().await {
            Ok(list) => {
                assert_eq!(list, vec![publisher("acme")]);
                break;
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!(
                "no reconnect within 5 s after the restart: {e}\nserver log:\n{}",
                server.log()
            ),
        }
    }
    repo.close().await;
}

/// A database as the first release left it, migrated by this one: `'default'` is
/// read as "each", and the new values can be stored.
#[tokio::test]
async fn a_stored_publisher_with_the_old_default_value_reads_as_each_after_migrating() {
    let server = PgServer::start().await;
    let first = tempfile::tempdir().unwrap();
    let name = "20261124000001_settings.sql";
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations/postgres")
        .join(name);
    std::fs::copy(source, first.path().join(name)).unwrap();
    let db = sqlx::PgPool::connect(&server.url).await.unwrap();
    sqlx::migrate::Migrator::new(first.path())
        .await
        .unwrap()
        .run(&db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO publishers (id, unknown_offers) VALUES ('old', 'default')")
        .execute(&db)
        .await
        .unwrap();
    db.close().await;

    let repo = repo(&server).await;
    let stored = repo.catalog("old").await.unwrap().unwrap().publisher;
    assert_eq!(stored.unknown_offers, UnknownOffers::Each);
    let shared = Publisher {
        unknown_offers: UnknownOffers::Shared,
        ..stored
    };
    repo.put_publisher(&shared).await.unwrap();
    assert_eq!(repo.catalog("old").await.unwrap().unwrap().publisher, shared);
}

/// A node starting while PostgreSQL is slow to answer (a busy machine, many nodes
/// starting at once) waits for its first connection longer than a request would
/// (3 s): here the server's answers are held for 5 s, and the node starts.
#[tokio::test]
async fn a_node_starts_when_postgresql_takes_seconds_to_answer_its_first_connection() {
    let server = PgServer::start().await;
    let relay = crate::support_proxy::Relay::start(format!("127.0.0.1:{}", server.port).parse().unwrap());
    let url = server
        .url
        .replace(&format!(":{}/", server.port), &format!(":{}/", relay.addr.port()));
    assert_ne!(url, server.url, "the node connects through the relay");
    relay.hold();
    let started = Instant::now();
    let starting = tokio::spawn(async move { PostgresSettings::connect(&url).await });
    tokio::time::sleep(Duration::from_secs(5)).await;
    relay.release();
    let repo = starting
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the node did not start: {e:#}"));
    assert!(started.elapsed() >= Duration::from_secs(5));
    repo.put_publisher(&publisher("acme")).await.unwrap();
    assert_eq!(repo.list_publishers().await.unwrap(), vec![publisher("acme")]);
    repo.close().await;
}
