//! One conformance suite for both settings databases: SQLite (embedded, in a
//! temporary directory) and PostgreSQL (a real server on loopback) must keep
//! publishers, offers and held sessions the same way, through the two ports the
//! domain uses, `SettingsRepo` and `SessionArchive`. What only PostgreSQL has to
//! do (several nodes at once, reconnecting, its migrations) is in
//! `settings_postgres.rs`.

use std::any::Any;
use std::sync::Arc;

use drisc::domain::journal::{Ended, JournalBatch};
use drisc::domain::policy::{CustomerOverride, LimitPolicy, OverrideKey};
use drisc::domain::ports::{HELD_CHUNK, SessionArchive, SettingsRepo};
use drisc::domain::settings::{Offer, Publisher, UnknownOffers};
use drisc::domain::{PoolKey, Session, SessionId, SessionState};
use drisc::store::SqliteSettings;

use super::support_postgres::PgServer;

/// A settings database under test, through the domain's ports.
pub struct Subject {
    repo: Arc<dyn SettingsRepo>,
    archive: Arc<dyn SessionArchive>,
    /// The server or directory the database lives in, kept until the test ends.
    _home: Box<dyn Any + Send>,
}

impl Subject {
    async fn sqlite() -> Subject {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteSettings::open(&dir.path().join("drisc.db")).await.unwrap();
        Subject {
            repo: Arc::new(db.clone()),
            archive: Arc::new(db),
            _home: Box::new(dir),
        }
    }

    async fn postgres() -> Subject {
        let server = PgServer::start().await;
        let db = super::settings_postgres::repo(&server).await;
        Subject {
            repo: Arc::new(db.clone()),
            archive: Arc::new(db),
            _home: Box::new(server),
        }
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() { super::$name(super::Subject::sqlite().await).await; })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() { super::$name(super::Subject::postgres().await).await; })*
        }
    };
}

conformance!(
    a_publisher_is_created_once_changed_in_every_field_and_listed_by_id,
    offers_are_put_replaced_and_deleted_for_one_publisher_only,
    an_offer_needs_its_publisher,
    publishers_are_read_page_by_page_in_byte_order_after_a_cursor,
    saved_sessions_are_taken_once_and_within_one_save_the_last_copy_wins,
    journal_batches_put_and_delete_rows_and_reading_keeps_them,
    an_offer_keeps_its_limit_policy_or_inherits_the_publishers,
    customer_overrides_are_put_replaced_and_deleted_and_flag_their_publisher,
);

async fn an_offer_keeps_its_limit_policy_or_inherits_the_publishers(s: Subject) {
    let repo = &s.repo;
    repo.create_publisher(&publisher("acme")).await.unwrap();
    let monitored = Offer {
        on_limit: Some(LimitPolicy::Monitor),
        ..offer("m", 1, &[], None)
    };
    repo.put_offer("acme", &monitored).await.unwrap();
    repo.put_offer("acme", &offer("plain", 1, &[], None)).await.unwrap();
    let catalog = repo.catalog("acme").await.unwrap().unwrap();
    assert_eq!(catalog.offers, vec![monitored, offer("plain", 1, &[], None)]);
    assert_eq!(catalog.publisher.on_limit, LimitPolicy::Reject, "the default");
    assert_eq!(catalog.publisher.customer_session_limit, None);
}

async fn customer_overrides_are_put_replaced_and_deleted_and_flag_their_publisher(s: Subject) {
    let repo = &s.repo;
    repo.create_publisher(&publisher("acme")).await.unwrap();
    repo.create_publisher(&publisher("other")).await.unwrap();
    repo.put_offer("acme", &offer("S1", 1, &[], None)).await.unwrap();
    repo.put_offer("other", &offer("S1", 1, &[], None)).await.unwrap();
    let key = |customer: &str| OverrideKey {
        publisher_id: "acme".into(),
        customer_id: customer.into(),
        offer_id: "S1".into(),
    };
    assert!(!repo.catalog("acme").await.unwrap().unwrap().overridden);
    assert_eq!(repo.customer_override(&key("fan")).await.unwrap(), None);

    let boost = CustomerOverride {
        session_limit: 4,
        expires_at: Some(1_900_000_000_123),
    };
    repo.put_override(&key("fan"), &boost).await.unwrap();
    assert_eq!(repo.customer_override(&key("fan")).await.unwrap(), Some(boost));
    assert_eq!(repo.customer_override(&key("fan-2")).await.unwrap(), None);
    assert!(repo.catalog("acme").await.unwrap().unwrap().overridden);
    assert!(
        !repo.catalog("other").await.unwrap().unwrap().overridden,
        "per publisher"
    );

    let forever = CustomerOverride {
        session_limit: u32::MAX,
        expires_at: None,
    };
    repo.put_override(&key("fan"), &forever).await.unwrap();
    assert_eq!(repo.customer_override(&key("fan")).await.unwrap(), Some(forever));

    assert!(repo.delete_override(&key("fan")).await.unwrap());
    assert!(!repo.delete_override(&key("fan")).await.unwrap());
    assert!(!repo.catalog("acme").await.unwrap().unwrap().overridden);

    // An override goes with its offer, and needs one.
    let limit = CustomerOverride {
        session_limit: 2,
        expires_at: None,
    };
    repo.put_override(&key("fan"), &limit).await.unwrap();
    assert!(repo.delete_offer("acme", "S1").await.unwrap());
    assert_eq!(repo.customer_override(&key("fan")).await.unwrap(), None);
    assert!(repo.put_override(&key("fan"), &limit).await.is_err(), "no such offer");
}

pub fn publisher(id: &str) -> Publisher {
    Publisher {
        id: id.into(),
        enabled: true,
        takeover_enabled: true,
        default_session_limit: 2,
        unknown_offers: UnknownOffers::Each,
        verification_key: None,
        jwks_uri: None,
        on_limit: LimitPolicy::Reject,
        customer_session_limit: None,
    }
}

fn offer(id: &str, limit: u32, tags: &[&str], takeover: Option<bool>) -> Offer {
    Offer {
        id: id.into(),
        session_limit: limit,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        takeover_enabled: takeover,
        on_limit: None,
    }
}

pub fn held(n: u64, state: SessionState) -> (PoolKey, Session) {
    (
        PoolKey::from_ids("acme", &format!("customer-{}", n % 3), "premium"),
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

pub fn sorted(mut sessions: Vec<(PoolKey, Session)>) -> Vec<(PoolKey, Session)> {
    sessions.sort_by_key(|(_, s)| s.id);
    sessions
}

async fn a_publisher_is_created_once_changed_in_every_field_and_listed_by_id(s: Subject) {
    let repo = &s.repo;
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
        on_limit: LimitPolicy::EvictOldest,
        customer_session_limit: Some(u32::MAX),
    };
    repo.put_publisher(&changed).await.unwrap();
    assert_eq!(repo.catalog("acme").await.unwrap().unwrap().publisher, changed);
    let shared = Publisher {
        unknown_offers: UnknownOffers::Shared,
        ..changed.clone()
    };
    repo.put_publisher(&shared).await.unwrap();
    assert_eq!(repo.catalog("acme").await.unwrap().unwrap().publisher, shared);
    repo.put_publisher(&changed).await.unwrap();

    // put_publisher also creates; listing is ordered by id, byte-wise.
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
}

async fn offers_are_put_replaced_and_deleted_for_one_publisher_only(s: Subject) {
    let repo = &s.repo;
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

    // Offers come by id, byte-wise.
    let catalog = repo.catalog("acme").await.unwrap().unwrap();
    assert_eq!(catalog.publisher, publisher("acme"));
    assert_eq!(catalog.offers, vec![upper.clone(), a.clone(), b.clone()]);

    // Putting an offer again replaces its limit, tags and takeover flag.
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

    // Changing the publisher keeps its offers.
    let changed = Publisher {
        enabled: false,
        ..publisher("other")
    };
    repo.put_publisher(&changed).await.unwrap();
    let catalog = repo.catalog("other").await.unwrap().unwrap();
    assert_eq!(
        (catalog.publisher, catalog.offers),
        (changed, vec![offer("a", 7, &["x"], None)])
    );
}

async fn an_offer_needs_its_publisher(s: Subject) {
    assert!(s.repo.put_offer("nobody", &offer("x", 1, &[], None)).await.is_err());
    assert!(s.repo.catalog("nobody").await.unwrap().is_none());
}

async fn publishers_are_read_page_by_page_in_byte_order_after_a_cursor(s: Subject) {
    let repo = &s.repo;
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
    let all: Vec<_> = repo
        .list_publishers()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(all, ids, "the whole list is the walk of every page");
}

async fn saved_sessions_are_taken_once_and_within_one_save_the_last_copy_wins(s: Subject) {
    let archive = &s.archive;
    assert!(archive.take().await.unwrap().is_empty());
    archive.save(&[]).await.unwrap();

    let states = [SessionState::Pending, SessionState::Live, SessionState::Detached];
    let sessions: Vec<_> = (0..30).map(|n| held(n, states[n as usize % 3])).collect();
    archive.save(&sessions).await.unwrap();

    // Saving a session again replaces it; within one call the last copy wins.
    let mut again = sessions[0].clone();
    again.1.name = "renamed".into();
    let mut last = again.clone();
    last.1.state = SessionState::Live;
    archive.save(&[again, last.clone()]).await.unwrap();
    let mut expected = sessions.clone();
    expected[0] = last;

    assert_eq!(
        sorted(archive.held().await.unwrap()),
        sorted(expected.clone()),
        "held keeps them"
    );
    assert_eq!(sorted(archive.take().await.unwrap()), sorted(expected));
    assert!(archive.take().await.unwrap().is_empty(), "take empties the archive");
    assert!(archive.held().await.unwrap().is_empty());
}

async fn journal_batches_put_and_delete_rows_and_reading_keeps_them(s: Subject) {
    let archive = &s.archive;
    // More rows than one statement takes, on either database.
    let sessions: Vec<_> = (0..6_000).map(|n| held(n, SessionState::Pending)).collect();
    let put = sessions
        .iter()
        .map(|(pool, s)| (Arc::new(pool.clone()), s.clone()))
        .collect();
    archive.write(&JournalBatch { put, delete: vec![] }).await.unwrap();
    // One batch both replaces a row and deletes others.
    let mut renamed = sessions[5_999].clone();
    renamed.1.name = "renamed".into();
    let batch = JournalBatch {
        put: vec![(Arc::new(renamed.0.clone()), renamed.1.clone())],
        delete: sessions[..1_200]
            .iter()
            .map(|(_, s)| Ended {
                id: s.id,
                created_at: s.created_at,
            })
            .collect(),
    };
    archive.write(&batch).await.unwrap();
    let mut expected = sessions[1_200..].to_vec();
    *expected.last_mut().unwrap() = renamed;
    assert_eq!(sorted(archive.held().await.unwrap()), sorted(expected.clone()));
    assert_eq!(
        sorted(archive.held().await.unwrap()),
        sorted(expected.clone()),
        "held() keeps the rows"
    );
    // As a start reads them: in chunks of at most HELD_CHUNK, each session once.
    let (into, mut chunks) = tokio::sync::mpsc::channel::<Vec<(PoolKey, Session)>>(1);
    let gather = async move {
        let mut sizes = Vec::new();
        while let Some(chunk) = chunks.recv().await {
            sizes.push(chunk.len());
        }
        sizes
    };
    let (read, sizes) = tokio::join!(archive.held_into(into), gather);
    read.unwrap();
    assert!(sizes.len() >= 2 && sizes.iter().all(|&n| n <= HELD_CHUNK), "{sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), expected.len());
    // A start that gave up: the reading stops, with no error, and keeps the rows.
    let (into, chunks) = tokio::sync::mpsc::channel(1);
    drop(chunks);
    archive.held_into(into).await.unwrap();
    assert_eq!(archive.held().await.unwrap().len(), expected.len());
    // A batch that deletes what is not there changes nothing.
    archive
        .write(&JournalBatch {
            put: vec![],
            delete: vec![Ended {
                id: SessionId::random(),
                created_at: 0,
            }],
        })
        .await
        .unwrap();
    assert_eq!(archive.held().await.unwrap().len(), expected.len());
}
