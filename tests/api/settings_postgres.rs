//! The PostgreSQL settings repository against a real PostgreSQL server on loopback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use drisc::domain::journal::JournalBatch;
use drisc::domain::ports::{SessionArchive, SettingsRepo};
use drisc::domain::settings::{Offer, Publisher, UnknownOffers};
use drisc::domain::{PoolKey, Session, SessionId, SessionState};
use drisc::store::PostgresSettings;
use tokio::task::JoinSet;

use crate::support_postgres::PgServer;

fn publisher(id: &str) -> Publisher {
    Publisher {
        id: id.into(),
        enabled: true,
        takeover_enabled: true,
        default_session_limit: 2,
        unknown_offers: UnknownOffers::Each,
        verification_key: None,
        jwks_uri: None,
    }
}

fn offer(id: &str, limit: u32, tags: &[&str], takeover: Option<bool>) -> Offer {
    Offer {
        id: id.into(),
        session_limit: limit,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        takeover_enabled: takeover,
    }
}

async fn repo(server: &PgServer) -> PostgresSettings {
    PostgresSettings::connect(&server.url)
        .await
        .unwrap_or_else(|e| panic!("connecting to {}: {e:#}\nserver log:\n{}", server.url, server.log()))
}

#[tokio::test]
async fn publisher_crud_round_trip() {
    let server = PgServer::start().await;
    let repo = repo(&server).await;

    assert!(repo.catalog("acme").await.unwrap().is_none());
    assert!(repo.list_publishers().await.unwrap().is_empty());

    let created = repo.create_publisher(&publisher("acme")).await.unwrap();
    assert_eq!(created.publisher, publisher("acme"));
    assert!(created.offers.is_empty());

    // Creating again keeps what is stored.
    let other = Publisher {
        default_session_limit: 9,
        ..publisher("acme")
    };
    assert_eq!(
        repo.create_publisher(&other).await.unwrap().publisher,
        publisher("acme")
    );

    // put_publisher changes every field, the largest limit and a PEM key included.
    let changed = Publisher {
        id: "acme".into(),
        enabled: false,
        takeover_enabled: false,
        default_session_limit: u32::MAX,
        unknown_offers: UnknownOffers::Reject,
        verification_key: Some("-----BEGIN PUBLIC KEY-----\nMFkw...\n-----END PUBLIC KEY-----\n".into()),
        jwks_uri: Some("https://idp.example.com/.well-known/jwks.json".into()),
    };
    repo.put_publisher(&changed).await.unwrap();
    assert_eq!(repo.catalog("acme").await.unwrap().unwrap().publisher, changed);

    // put_publisher also creates; listing is ordered by id, byte-wise as in SQLite.
    repo.put_publisher(&publisher("Zeta")).await.unwrap();
    repo.put_publisher(&publisher("beta")).await.unwrap();
    let ids: Vec<String> = repo
        .list_publishers()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(ids, ["Zeta", "acme", "beta"]);
    assert_eq!(repo.list_publishers().await.unwrap()[1], changed);

    // Back to no key.
    let keyless = Publisher {
        verification_key: None,
        jwks_uri: None,
        ..changed
    };
    repo.put_publisher(&keyless).await.unwrap();
    assert_eq!(repo.catalog("acme").await.unwrap().unwrap().publisher, keyless);
    repo.close().await;
}

#[tokio::test]
async fn offers_with_tags_round_trip() {
    let server = PgServer::start().await;
    let repo = repo(&server).await;
    repo.create_publisher(&publisher("acme")).await.unwrap();
    repo.create_publisher(&publisher("other")).await.unwrap();

    let b = offer("b", 3, &["live", "sport"], None);
    let a = offer("a", 0, &[], Some(false));
    let upper = offer(
        "Z",
        u32::MAX,
        &["vod", "with 'quote', comma and \"double\""],
        Some(true),
    );
    for o in [&b, &a, &upper] {
        repo.put_offer("acme", o).await.unwrap();
    }
    repo.put_offer("other", &offer("a", 7, &["x"], None)).await.unwrap();

    let catalog = repo.catalog("acme").await.unwrap().unwrap();
    assert_eq!(catalog.publisher, publisher("acme"));
    assert_eq!(catalog.offers, vec![upper.clone(), a.clone(), b.clone()]);

    // Updating an offer replaces its limit, tags and takeover flag.
    let b2 = offer("b", 5, &["vod"], Some(true));
    repo.put_offer("acme", &b2).await.unwrap();
    let catalog = repo.catalog("acme").await.unwrap().unwrap();
    assert_eq!(catalog.offers, vec![upper.clone(), a.clone(), b2.clone()]);

    // Deleting says whether there was something to delete, and touches one publisher.
    assert!(repo.delete_offer("acme", "a").await.unwrap());
    assert!(!repo.delete_offer("acme", "a").await.unwrap());
    assert!(!repo.delete_offer("nobody", "b").await.unwrap());
    assert_eq!(repo.catalog("acme").await.unwrap().unwrap().offers, vec![upper, b2]);
    assert_eq!(
        repo.catalog("other").await.unwrap().unwrap().offers,
        vec![offer("a", 7, &["x"], None)]
    );

    // An offer needs its publisher.
    assert!(repo.put_offer("nobody", &offer("x", 1, &[], None)).await.is_err());
    repo.close().await;
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

fn held(n: u64, state: SessionState) -> (PoolKey, Session) {
    (
        PoolKey {
            publisher_id: "acme".into(),
            customer_id: format!("customer-{}", n % 3),
            offer_id: "premium".into(),
        },
        Session {
            id: SessionId::random(),
            name: format!("TV {n}"),
            state,
            expires_at: 1_900_000_000_000 + n,
            holder: None,
            created_at: 1_800_000_000_000 + n,
        },
    )
}

fn sorted(mut sessions: Vec<(PoolKey, Session)>) -> Vec<(PoolKey, Session)> {
    sessions.sort_by_key(|(_, s)| s.id);
    sessions
}

#[tokio::test]
async fn archive_save_and_take_round_trip() {
    let server = PgServer::start().await;
    let repo = repo(&server).await;
    assert!(repo.take().await.unwrap().is_empty());
    repo.save(&[]).await.unwrap();

    let states = [SessionState::Pending, SessionState::Live, SessionState::Detached];
    let sessions: Vec<_> = (0..30).map(|n| held(n, states[n as usize % 3])).collect();
    repo.save(&sessions).await.unwrap();

    // Saving a session again replaces it; within one call the last copy wins.
    let mut again = sessions[0].clone();
    again.1.name = "renamed".into();
    let mut last = again.clone();
    last.1.state = SessionState::Live;
    repo.save(&[again, last.clone()]).await.unwrap();
    let mut expected = sessions.clone();
    expected[0] = last;

    let taken = repo.take().await.unwrap();
    assert_eq!(sorted(taken), sorted(expected));
    assert!(repo.take().await.unwrap().is_empty(), "take empties the archive");

    // Nodes taking at once never both get a session.
    let many: Vec<_> = (0..12_000).map(|n| held(n, SessionState::Live)).collect();
    repo.save(&many).await.unwrap();
    let other = PostgresSettings::connect(&server.url).await.unwrap();
    let (x, y) = tokio::join!(repo.take(), other.take());
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.len() + y.len(), many.len());
    let mut all: Vec<_> = x.into_iter().chain(y).collect();
    all = sorted(all);
    assert_eq!(all, sorted(many));
    repo.close().await;
    other.close().await;
}

/// The session journal on PostgreSQL (memory sessions with PostgreSQL settings):
/// batches put and delete rows in one transaction, and reading keeps them.
#[tokio::test]
async fn archive_journal_batches_write_and_delete_and_reading_keeps_the_rows() {
    let server = PgServer::start().await;
    let repo = repo(&server).await;
    let sessions: Vec<_> = (0..6_000).map(|n| held(n, SessionState::Pending)).collect();
    let put = sessions
        .iter()
        .map(|(pool, s)| (Arc::new(pool.clone()), s.clone()))
        .collect();
    repo.write(&JournalBatch { put, delete: vec![] }).await.unwrap();
    // One batch both replaces a row and deletes others.
    let mut renamed = sessions[5_999].clone();
    renamed.1.name = "renamed".into();
    let batch = JournalBatch {
        put: vec![(Arc::new(renamed.0.clone()), renamed.1.clone())],
        delete: sessions[..1_000].iter().map(|(_, s)| s.id).collect(),
    };
    repo.write(&batch).await.unwrap();
    let mut expected = sessions[1_000..].to_vec();
    expected[4_999] = renamed;
    assert_eq!(sorted(repo.held().await.unwrap()), sorted(expected.clone()));
    assert_eq!(
        sorted(repo.held().await.unwrap()),
        sorted(expected),
        "held() keeps the rows"
    );
    repo.close().await;
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

#[tokio::test]
async fn publishers_are_read_page_by_page_in_byte_order_after_a_cursor() {
    let server = PgServer::start().await;
    let repo = repo(&server).await;
    let mut ids = vec!["b", "a", "B", "a-b", "ab", "é", "Z"];
    for id in &ids {
        repo.create_publisher(&publisher(id)).await.unwrap();
    }
    // Byte order, whatever the database's collation: "B" < "Z" < "a" < "é".
    ids.sort();
    for limit in [1, 2, 3, 100] {
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..100 {
            let page = repo.publishers_after(after.as_deref(), limit).await.unwrap();
            assert!(page.len() <= limit as usize);
            seen.extend(page.iter().map(|p| p.id.clone()));
            if page.len() < limit as usize {
                break;
            }
            after = page.last().map(|p| p.id.clone());
        }
        assert_eq!(seen, ids, "pages of {limit}");
    }
    assert_eq!(repo.publishers_after(Some("é"), 10).await.unwrap(), vec![]);
    assert_eq!(
        repo.publishers_after(Some("a"), 1).await.unwrap(),
        vec![publisher("a-b")]
    );
}
