//! The publishers' settings as this node last read them: a [`SettingsRepo`] that
//! wraps the database's and answers admission from memory.
//!
//! Admission reads a publisher's catalog on every create, so it must rarely wait
//! on the database; changes made through other nodes must still show within
//! `ttl`. Two bounded caches do this:
//!
//! - `fresh` holds what was read less than `ttl` ago. A miss is loaded once, however
//!   many requests ask at the same moment (the others wait for that one read), and
//!   the load survives the caller going away: if the request that started it is
//!   dropped mid-read (a client disconnecting), a waiting request takes it over and
//!   a later one starts afresh. Nothing is ever left marked "being refreshed".
//! - `known` keeps the last good copy for much longer, only to be served while the
//!   database is unreachable.
//!
//! Both are bounded in entries, so made-up publisher ids cannot grow them without end.
//!
//! In front of `fresh`, `hot` answers admission's look-ups without an `await`
//! ([`SettingsRepo::catalog_at_hand`]): a map of the catalogs read from the
//! database, each until `ttl` after its read began. A hit is a map look-up and a
//! clock read, where `fresh` cost a boxed future and moka's bookkeeping (about 0.8
//! µs of a create's 28 in bench/analysis.md, round twenty). Only configured
//! publishers go in, up to the same bound; anything else falls through to `fresh`.
//! A write made through this repository forgets the publisher's fresh copy, so this
//! node reads it back at once; other nodes see it within `ttl`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use moka::future::Cache;

use crate::domain::policy::{CustomerOverride, OverrideKey};
use crate::domain::ports::{SettingsError, SettingsRepo};
use crate::domain::settings::{Catalog, Offer, Publisher};

/// How many publishers each cache holds at most. Far above any real deployment;
/// beyond it the least useful entries are evicted.
const MAX_PUBLISHERS: u64 = 100_000;

/// How many customers' overrides are cached at most: each entry is small, and a
/// miss costs one indexed read.
const MAX_OVERRIDES: u64 = 100_000;

/// How long the last good copy is kept to serve while the database is down.
const KEEP_KNOWN: Duration = Duration::from_secs(24 * 3600);

pub struct CachedSettings {
    inner: Arc<dyn SettingsRepo>,
    /// `None` caches "not configured", so unknown publishers do not reach the
    /// database on every request either.
    fresh: Cache<String, Option<Arc<Catalog>>>,
    known: Cache<String, Arc<Catalog>>,
    /// Customers' overrides as last read, `None` included ("no override"), for
    /// `ttl` like the catalogs. Read only for publishers whose catalog says they
    /// have overrides; bounded like them, since customer ids are the players'.
    overrides: Cache<OverrideKey, Option<CustomerOverride>>,
    hot: DashMap<String, Hot, foldhash::fast::RandomState>,
    ttl: Duration,
    capacity: usize,
}

/// A catalog read from the database, fresh until `until`.
struct Hot {
    catalog: Arc<Catalog>,
    until: Instant,
}

impl CachedSettings {
    /// `inner`'s catalogs, each kept for `ttl` (`cluster.settings_cache_ttl`).
    pub fn new(inner: Arc<dyn SettingsRepo>, ttl: Duration) -> Self {
        Self::with_capacity(inner, ttl, MAX_PUBLISHERS)
    }

    pub fn with_capacity(inner: Arc<dyn SettingsRepo>, ttl: Duration, capacity: u64) -> Self {
        Self {
            inner,
            fresh: Cache::builder().max_capacity(capacity).time_to_live(ttl).build(),
            known: Cache::builder().max_capacity(capacity).time_to_idle(KEEP_KNOWN).build(),
            overrides: Cache::builder().max_capacity(MAX_OVERRIDES).time_to_live(ttl).build(),
            hot: DashMap::default(),
            ttl,
            capacity: usize::try_from(capacity).unwrap_or(usize::MAX),
        }
    }

    /// Keeps `catalog` at hand until `ttl` after `read_at`, the moment its read
    /// began: never fresher than the database was then.
    fn keep_hot(&self, catalog: &Arc<Catalog>, read_at: Instant) {
        let id = &catalog.publisher.id;
        if self.hot.len() >= self.capacity && !self.hot.contains_key(id) {
            return;
        }
        self.hot.insert(
            id.clone(),
            Hot {
                catalog: Arc::clone(catalog),
                until: read_at + self.ttl,
            },
        );
    }

    /// Records what this node just wrote or read.
    async fn put(&self, catalog: Arc<Catalog>) {
        self.keep_hot(&catalog, Instant::now());
        let id = catalog.publisher.id.clone();
        self.known.insert(id.clone(), Arc::clone(&catalog)).await;
        self.fresh.insert(id, Some(catalog)).await;
    }

    /// Forgets a publisher after a change made through this node: the next read
    /// goes to the database.
    async fn forget(&self, publisher_id: &str) {
        self.hot.remove(publisher_id);
        self.fresh.invalidate(publisher_id).await;
    }

    /// Entries in the fresh cache (moka counts lazily).
    #[cfg(test)]
    async fn entries(&self) -> u64 {
        self.fresh.run_pending_tasks().await;
        self.fresh.entry_count()
    }
}

#[async_trait]
impl SettingsRepo for CachedSettings {
    async fn catalog(&self, publisher_id: &str) -> Result<Option<Catalog>, SettingsError> {
        Ok(self.shared_catalog(publisher_id).await?.map(|c| Catalog::clone(&c)))
    }

    fn catalog_at_hand(&self, publisher_id: &str) -> Option<Arc<Catalog>> {
        let hot = self.hot.get(publisher_id)?;
        (Instant::now() < hot.until).then(|| Arc::clone(&hot.catalog))
    }

    /// The publisher's catalog, `None` if it is not configured. While the database
    /// is unreachable, the last copy read is served.
    async fn shared_catalog(&self, publisher_id: &str) -> Result<Option<Arc<Catalog>>, SettingsError> {
        let load = async {
            let read_at = Instant::now();
            let catalog = self.inner.catalog(publisher_id).await?.map(Arc::new);
            match &catalog {
                Some(c) => {
                    self.keep_hot(c, read_at);
                    self.known.insert(publisher_id.to_owned(), Arc::clone(c)).await;
                }
                None => {
                    self.hot.remove(publisher_id);
                    self.known.invalidate(publisher_id).await;
                }
            }
            Ok::<_, SettingsError>(catalog)
        };
        match self.fresh.try_get_with_by_ref(publisher_id, load).await {
            Ok(catalog) => Ok(catalog),
            Err(e) => match self.known.get(publisher_id).await {
                Some(catalog) => {
                    tracing::warn!(error = %e, publisher = publisher_id, "settings unreachable; using the cached copy");
                    Ok(Some(catalog))
                }
                None => Err(SettingsError::Database(e.to_string())),
            },
        }
    }

    async fn create_publisher(&self, publisher: &Publisher) -> Result<Catalog, SettingsError> {
        let catalog = self.inner.create_publisher(publisher).await?;
        self.put(Arc::new(catalog.clone())).await;
        Ok(catalog)
    }

    async fn put_publisher(&self, publisher: &Publisher) -> Result<(), SettingsError> {
        self.inner.put_publisher(publisher).await?;
        self.forget(&publisher.id).await;
        Ok(())
    }

    /// Not cached: operators page through publishers, admission never does.
    async fn publishers_after(&self, after: Option<&str>, limit: u32) -> Result<Vec<Publisher>, SettingsError> {
        self.inner.publishers_after(after, limit).await
    }

    async fn put_offer(&self, publisher_id: &str, offer: &Offer) -> Result<(), SettingsError> {
        self.inner.put_offer(publisher_id, offer).await?;
        self.forget(publisher_id).await;
        Ok(())
    }

    async fn delete_offer(&self, publisher_id: &str, offer_id: &str) -> Result<bool, SettingsError> {
        let deleted = self.inner.delete_offer(publisher_id, offer_id).await?;
        self.forget(publisher_id).await;
        // Its overrides went with it (ON DELETE CASCADE).
        self.overrides.invalidate_all();
        Ok(deleted)
    }

    /// Admission reads it on every create of a publisher with overrides: from
    /// memory for `ttl`. While the database is unreachable, a customer whose
    /// override is not cached gets the offer's own limit (and a warning): the
    /// catalog is served from its last copy then, and admission goes on.
    async fn customer_override(&self, key: &OverrideKey) -> Result<Option<CustomerOverride>, SettingsError> {
        match self
            .overrides
            .try_get_with_by_ref(key, self.inner.customer_override(key))
            .await
        {
            Ok(found) => Ok(found),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    publisher = %key.publisher_id,
                    offer = %key.offer_id,
                    "settings unreachable; the offer's own limit applies instead of the customer's override"
                );
                Ok(None)
            }
        }
    }

    /// Read back at once on this node; the publisher's catalog is forgotten too,
    /// since it says whether the publisher has overrides at all.
    async fn put_override(&self, key: &OverrideKey, value: &CustomerOverride) -> Result<(), SettingsError> {
        self.inner.put_override(key, value).await?;
        self.overrides.invalidate(key).await;
        self.forget(&key.publisher_id).await;
        Ok(())
    }

    async fn delete_override(&self, key: &OverrideKey) -> Result<bool, SettingsError> {
        let deleted = self.inner.delete_override(key).await?;
        self.overrides.invalidate(key).await;
        self.forget(&key.publisher_id).await;
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use tokio::sync::Semaphore;

    use super::*;
    use crate::domain::policy::{CustomerOverride, LimitPolicy, OverrideKey};
    use crate::domain::settings::{Offer, Publisher, UnknownOffers};
    use crate::store::SqliteSettings;

    /// The real SQLite repository behind a gate: reads wait for a permit, so a test
    /// can hold a read in flight and drop the request that started it.
    struct Gated {
        db: SqliteSettings,
        gate: Semaphore,
        entered: Semaphore,
    }

    #[async_trait]
    impl SettingsRepo for Gated {
        async fn catalog(&self, publisher_id: &str) -> Result<Option<Catalog>, SettingsError> {
            self.entered.add_permits(1);
            let _permit = self
                .gate
                .acquire()
                .await
                .map_err(|e| SettingsError::Database(e.to_string()))?;
            self.db.catalog(publisher_id).await
        }
        async fn create_publisher(&self, p: &Publisher) -> Result<Catalog, SettingsError> {
            self.db.create_publisher(p).await
        }
        async fn put_publisher(&self, p: &Publisher) -> Result<(), SettingsError> {
            self.db.put_publisher(p).await
        }
        async fn publishers_after(&self, after: Option<&str>, limit: u32) -> Result<Vec<Publisher>, SettingsError> {
            self.db.publishers_after(after, limit).await
        }
        async fn put_offer(&self, p: &str, o: &Offer) -> Result<(), SettingsError> {
            self.db.put_offer(p, o).await
        }
        async fn delete_offer(&self, p: &str, o: &str) -> Result<bool, SettingsError> {
            self.db.delete_offer(p, o).await
        }
        async fn customer_override(&self, k: &OverrideKey) -> Result<Option<CustomerOverride>, SettingsError> {
            self.db.customer_override(k).await
        }
        async fn put_override(&self, k: &OverrideKey, v: &CustomerOverride) -> Result<(), SettingsError> {
            self.db.put_override(k, v).await
        }
        async fn delete_override(&self, k: &OverrideKey) -> Result<bool, SettingsError> {
            self.db.delete_override(k).await
        }
    }

    fn offer(limit: u32) -> Offer {
        Offer {
            id: "S1".into(),
            session_limit: limit,
            tags: Vec::new(),
            takeover_enabled: None,
            on_limit: None,
        }
    }

    /// Publisher "p"'s catalog read as admission reads it: at hand, else awaited.
    async fn admission_read(cache: &CachedSettings) -> Arc<Catalog> {
        match cache.catalog_at_hand("p") {
            Some(catalog) => catalog,
            None => cache.shared_catalog("p").await.unwrap().unwrap(),
        }
    }

    async fn limit_of(cache: &CachedSettings) -> u32 {
        admission_read(cache).await.offers[0].session_limit
    }

    #[tokio::test]
    async fn a_request_dropped_mid_refresh_leaves_no_entry_stale() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteSettings::open(&dir.path().join("t.db")).await.unwrap();
        db.create_publisher(&Publisher {
            id: "p".into(),
            enabled: true,
            takeover_enabled: true,
            default_session_limit: 1,
            unknown_offers: UnknownOffers::default(),
            verification_key: None,
            jwks_uri: None,
            on_limit: LimitPolicy::Reject,
            customer_session_limit: None,
        })
        .await
        .unwrap();
        db.put_offer("p", &offer(1)).await.unwrap();
        let gated = Arc::new(Gated {
            db: db.clone(),
            gate: Semaphore::new(1_000),
            entered: Semaphore::new(0),
        });
        let repo: Arc<dyn SettingsRepo> = gated.clone();
        let ttl = Duration::from_millis(100);
        let cache = CachedSettings::new(repo, ttl);
        assert_eq!(limit_of(&cache).await, 1);

        // The limit changes through another node; once the TTL passes, a request
        // starts the re-read and is dropped while the read is held.
        db.put_offer("p", &offer(2)).await.unwrap();
        tokio::time::sleep(ttl * 2).await;
        gated.gate.forget_permits(1_000);
        let _ = gated.entered.try_acquire_many(gated.entered.available_permits() as u32);
        let cache = Arc::new(cache);
        let dropped = tokio::spawn({
            let cache = Arc::clone(&cache);
            async move { cache.shared_catalog("p").await.map(|_| ()) }
        });
        let _ = gated.entered.acquire().await.unwrap();
        dropped.abort();
        assert!(dropped.await.unwrap_err().is_cancelled());

        // The database answers again: the next request reads the new limit.
        gated.gate.add_permits(1_000);
        let read = tokio::time::timeout(Duration::from_secs(5), limit_of(&cache)).await;
        assert_eq!(read.expect("not stuck on the dropped refresh"), 2);
    }

    #[tokio::test]
    async fn the_cache_holds_a_bounded_number_of_publishers() {
        let dir = tempfile::tempdir().unwrap();
        let db: Arc<dyn SettingsRepo> = Arc::new(SqliteSettings::open(&dir.path().join("t.db")).await.unwrap());
        let cache = CachedSettings::with_capacity(db, Duration::from_secs(60), 50);
        for i in 0..500 {
            assert!(cache.shared_catalog(&format!("made-up-{i}")).await.unwrap().is_none());
        }
        assert!(cache.entries().await <= 50, "{} entries", cache.entries().await);
    }

    #[tokio::test]
    async fn a_catalog_at_hand_is_a_fresh_copy_of_a_configured_publisher_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteSettings::open(&dir.path().join("t.db")).await.unwrap();
        for i in 0..10 {
            db.create_publisher(&Publisher {
                id: format!("p{i}"),
                ..publisher_p()
            })
            .await
            .unwrap();
        }
        let ttl = Duration::from_millis(200);
        let cache = CachedSettings::with_capacity(Arc::new(db), ttl, 3);

        assert!(cache.shared_catalog("made-up").await.unwrap().is_none());
        assert!(
            cache.catalog_at_hand("made-up").is_none(),
            "no entry for what is not configured"
        );
        assert!(cache.catalog_at_hand("p0").is_none(), "nothing before a read");
        let read = cache.shared_catalog("p0").await.unwrap().unwrap();
        let at_hand = cache.catalog_at_hand("p0").expect("at hand after a read");
        assert!(Arc::ptr_eq(&read, &at_hand));

        tokio::time::sleep(ttl + Duration::from_millis(50)).await;
        assert!(cache.catalog_at_hand("p0").is_none(), "not past the ttl");

        for i in 0..10 {
            cache.shared_catalog(&format!("p{i}")).await.unwrap().unwrap();
        }
        let held = (0..10)
            .filter(|i| cache.catalog_at_hand(&format!("p{i}")).is_some())
            .count();
        assert_eq!(held, 3, "as many as the capacity, no more");
    }

    /// Publisher "p" with the defaults and an offer limit of 1.
    fn publisher_p() -> Publisher {
        Publisher {
            id: "p".into(),
            enabled: true,
            takeover_enabled: true,
            default_session_limit: 1,
            unknown_offers: UnknownOffers::default(),
            verification_key: None,
            jwks_uri: None,
            on_limit: LimitPolicy::Reject,
            customer_session_limit: None,
        }
    }

    #[tokio::test]
    async fn a_write_through_the_cache_shows_at_once_one_made_elsewhere_within_the_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteSettings::open(&dir.path().join("t.db")).await.unwrap();
        let cache = CachedSettings::new(Arc::new(db.clone()), Duration::from_secs(3600));
        let publisher = publisher_p();
        cache.create_publisher(&publisher).await.unwrap();
        cache.put_offer("p", &offer(1)).await.unwrap();
        assert_eq!(limit_of(&cache).await, 1);
        cache.put_offer("p", &offer(2)).await.unwrap();
        assert_eq!(limit_of(&cache).await, 2, "this node's write is read back at once");

        // Another node's write (straight to the database) waits for the TTL.
        db.put_offer("p", &offer(3)).await.unwrap();
        assert_eq!(limit_of(&cache).await, 2);
        assert!(cache.delete_offer("p", "S1").await.unwrap());
        let catalog = cache.shared_catalog("p").await.unwrap().unwrap();
        assert!(catalog.offers.is_empty(), "{catalog:?}");
    }

    #[tokio::test]
    async fn an_override_written_here_is_read_at_once_and_one_written_elsewhere_within_the_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteSettings::open(&dir.path().join("t.db")).await.unwrap();
        let ttl = Duration::from_millis(300);
        let cache = CachedSettings::new(Arc::new(db.clone()), ttl);
        let publisher = publisher_p();
        cache.create_publisher(&publisher).await.unwrap();
        cache.put_offer("p", &offer(1)).await.unwrap();
        let key = OverrideKey {
            publisher_id: "p".into(),
            customer_id: "c".into(),
            offer_id: "S1".into(),
        };
        let limit = |n| CustomerOverride {
            session_limit: n,
            expires_at: None,
        };
        assert_eq!(
            cache.customer_override(&key).await.unwrap(),
            None,
            "none yet, and cached so"
        );
        assert!(!cache.shared_catalog("p").await.unwrap().unwrap().overridden);

        cache.put_override(&key, &limit(3)).await.unwrap();
        assert_eq!(
            cache.customer_override(&key).await.unwrap(),
            Some(limit(3)),
            "read back at once"
        );
        assert!(
            cache.shared_catalog("p").await.unwrap().unwrap().overridden,
            "the flag too"
        );

        // Another node's write shows within the TTL, not before.
        db.put_override(&key, &limit(5)).await.unwrap();
        assert_eq!(cache.customer_override(&key).await.unwrap(), Some(limit(3)));
        tokio::time::sleep(ttl * 2).await;
        assert_eq!(cache.customer_override(&key).await.unwrap(), Some(limit(5)));

        assert!(cache.delete_override(&key).await.unwrap());
        assert_eq!(cache.customer_override(&key).await.unwrap(), None);
    }
}
