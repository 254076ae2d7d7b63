//! Settings, server secrets and saved sessions in an embedded SQLite database.

use std::path::Path;
use std::str::FromStr;

use anyhow::Context;
use async_trait::async_trait;
use rand::RngCore;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteRow};
use sqlx::{ConnectOptions, Connection, Row, SqlitePool};

use super::outbox::lane::{Lane, Settled as LaneSettled};
use super::sqlite_journal::Journal;
use super::{ServerData, SettingsDb};
use crate::config::StorageSettings;
use crate::domain::journal::JournalBatch;
use crate::domain::policy::{CustomerOverride, LimitPolicy, OverrideKey};
use crate::domain::ports::{HeldSink, SessionArchive, SettingsError, SettingsRepo};
use crate::domain::settings::{Catalog, Offer, Publisher, UnknownOffers};
use crate::domain::{PoolKey, Session};
use crate::readiness::Probe;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// SQLite's page cache per connection, in KiB: 4 connections hold at most 2 MiB.
const CACHE_KIB: u32 = 512;

#[derive(Clone)]
pub struct SqliteSettings {
    db: SqlitePool,
    /// The session journal, in a file of its own written from a thread at nice
    /// 19 (see [`super::sqlite_journal`]).
    journal: std::sync::Arc<Journal>,
    /// The outbox writer's own connection, held open: the write that makes events
    /// durable takes no connection from the pool (whose every acquire is a round
    /// trip to the connection's thread, its ping) and waits for no other user of
    /// it. At its default `synchronous` (FULL, as every connection here): a
    /// written event is on disk at the commit.
    appender: std::sync::Arc<OwnConnection>,
    /// Per publisher, a number never below the events its outbox holds, kept by
    /// the appender so that a batch within the cap by it needs no count read (see
    /// `held_bound` in `store::outbox::sqlite`).
    outbox_held: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
    /// The outbox's delivery lane: events sent from their staged batches with no
    /// row of their own (`store::outbox::lane`). Its lock is taken before the
    /// write lock by the claims, settles and deletes that change it.
    outbox_lane: std::sync::Arc<tokio::sync::Mutex<Lane>>,
    /// Per publisher, events of staged batches that left the lane (read by the counts).
    outbox_settled: LaneSettled,
}

pub(super) fn db_err(e: impl std::fmt::Display) -> SettingsError {
    SettingsError::Database(e.to_string())
}

/// How an [`OwnConnection`] opens its connection.
pub(super) type Opener =
    fn(SqliteConnectOptions) -> std::pin::Pin<Box<dyn Future<Output = Result<SqliteConnection, SettingsError>> + Send>>;

/// A connection of its own for one writer (the session journal, the outbox's
/// appender), opened on first use and held open, outside the pool. Its lock
/// (tokio's) is held across the writer's statements: the writer is its one user,
/// so nothing waits on it but `close`.
pub(super) struct OwnConnection {
    options: SqliteConnectOptions,
    open: Opener,
    conn: tokio::sync::Mutex<Option<SqliteConnection>>,
}

impl OwnConnection {
    pub(super) fn new(options: SqliteConnectOptions, open: Opener) -> Self {
        Self {
            options,
            open,
            conn: tokio::sync::Mutex::new(None),
        }
    }

    /// A plain connection, on sqlx's own thread.
    pub(super) fn plain(options: SqliteConnectOptions) -> Self {
        Self::new(options, |options| {
            Box::pin(async move { options.connect().await.map_err(db_err) })
        })
    }

    /// Runs `work` on the connection, opened if it is not; after an error the
    /// connection is closed, so the next call opens a fresh one (a call cut off
    /// mid-statement, or a crashed SQLite thread, leaves nothing behind).
    pub(super) async fn with<T>(
        &self,
        work: impl AsyncFnOnce(&mut SqliteConnection) -> Result<T, SettingsError>,
    ) -> Result<T, SettingsError> {
        let mut slot = self.conn.lock().await;
        let conn = match &mut *slot {
            Some(conn) => conn,
            None => slot.insert((self.open)(self.options.clone()).await?),
        };
        let result = work(conn).await;
        if result.is_err()
            && let Some(broken) = slot.take()
        {
            let _ = broken.close().await;
        }
        result
    }

    pub(super) async fn close(&self) {
        if let Some(conn) = self.conn.lock().await.take() {
            let _ = conn.close().await;
        }
    }
}

impl SqliteSettings {
    /// Opens (creating if needed) the database file and applies pending migrations.
    /// The file is made 0600 before SQLite opens it: SQLite gives the -wal and -shm
    /// files it creates the database file's mode.
    pub async fn open(path: &Path) -> anyhow::Result<Self> {
        super::private_files::ensure_private_database(path)?;
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            // Each connection's page cache, in KiB (SQLite's default: 2,000): a bound on
            // what the pool's 4 connections hold (not what made the soak's RSS creep:
            // that was prepared statements, see `statements`). The journal opens its own
            // file with these options and a smaller cache (`sqlite_journal::CACHE_KIB`).
            .pragma("cache_size", format!("-{CACHE_KIB}"));
        let db = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&db).await?;
        let journal = std::sync::Arc::new(Journal::open(path, options.clone(), &db).await?);
        let appender = std::sync::Arc::new(OwnConnection::plain(options));
        let settled = LaneSettled::default();
        Ok(Self {
            db,
            journal,
            appender,
            outbox_held: std::sync::Arc::default(),
            outbox_lane: std::sync::Arc::new(tokio::sync::Mutex::new(Lane::new(settled.clone()))),
            outbox_settled: settled,
        })
    }

    /// The secret named `name`, created at random on first use so it survives restarts.
    pub async fn secret(&self, name: &str) -> Result<String, SettingsError> {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let fresh: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        sqlx::query("INSERT INTO server_secrets (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(&fresh)
            .execute(&self.db)
            .await
            .map_err(db_err)?;
        sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = ?")
            .bind(name)
            .fetch_one(&self.db)
            .await
            .map_err(db_err)
    }

    pub async fn close(&self) {
        // What the lane still holds becomes rows, so a restart sends nothing twice.
        self.park_outbox_lane().await;
        self.appender.close().await;
        self.journal.close().await;
        self.db.close().await;
    }

    /// The connections, for the webhooks' outbox (`store::outbox`).
    pub(super) fn pool(&self) -> &SqlitePool {
        &self.db
    }

    /// The outbox writer's connection (`store::outbox`).
    pub(super) fn appender(&self) -> &OwnConnection {
        &self.appender
    }

    /// What the appender knows of each publisher's held events (`store::outbox`).
    pub(super) fn outbox_held(&self) -> &std::sync::Mutex<std::collections::HashMap<String, u64>> {
        &self.outbox_held
    }

    /// The outbox's delivery lane (`store::outbox`).
    pub(super) fn outbox_lane(&self) -> &tokio::sync::Mutex<Lane> {
        &self.outbox_lane
    }

    /// Per publisher, events of staged batches that left the lane (`store::outbox`).
    pub(super) fn outbox_settled(&self) -> &LaneSettled {
        &self.outbox_settled
    }
}

/// Opens the embedded database, `drisc.db` in `storage.data_dir` (made 0700 if
/// it does not exist).
pub async fn open(storage: &StorageSettings) -> anyhow::Result<SettingsDb> {
    let dir = &storage.data_dir;
    super::private_files::ensure_private_dir(dir)
        .with_context(|| format!("cannot create storage.data_dir {dir:?} (as 0700)"))?;
    let path = dir.join("drisc.db");
    let db = SqliteSettings::open(&path)
        .await
        .with_context(|| format!("cannot open the database {path:?}"))?;
    Ok(SettingsDb::of(db, true))
}

#[async_trait]
impl ServerData for SqliteSettings {
    async fn secret(&self, name: &str) -> Result<String, SettingsError> {
        SqliteSettings::secret(self, name).await
    }

    async fn close(&self) {
        SqliteSettings::close(self).await;
    }
}

fn publisher_from_row(row: &SqliteRow) -> Result<Publisher, SettingsError> {
    let unknown: String = row.try_get("unknown_offers").map_err(db_err)?;
    Ok(Publisher {
        id: row.try_get("id").map_err(db_err)?,
        enabled: row.try_get("enabled").map_err(db_err)?,
        takeover_enabled: row.try_get("takeover_enabled").map_err(db_err)?,
        default_session_limit: row.try_get("default_session_limit").map_err(db_err)?,
        unknown_offers: UnknownOffers::parse(&unknown).unwrap_or_default(),
        verification_key: row.try_get("verification_key").map_err(db_err)?,
        jwks_uri: row.try_get("jwks_uri").map_err(db_err)?,
        on_limit: policy_from(row.try_get("on_limit").map_err(db_err)?).unwrap_or_default(),
        customer_session_limit: row.try_get("customer_session_limit").map_err(db_err)?,
    })
}

/// A stored `on_limit`; one this server does not know (written by a later
/// release) reads as the DRISC behaviour, `reject`.
pub(super) fn policy_from(stored: Option<String>) -> Option<LimitPolicy> {
    stored.map(|s| LimitPolicy::parse(&s).unwrap_or_default())
}

fn offer_from_row(row: &SqliteRow) -> Result<Offer, SettingsError> {
    let tags: String = row.try_get("tags").map_err(db_err)?;
    Ok(Offer {
        id: row.try_get("id").map_err(db_err)?,
        session_limit: row.try_get("session_limit").map_err(db_err)?,
        tags: serde_json::from_str(&tags).map_err(db_err)?,
        takeover_enabled: row.try_get("takeover_enabled").map_err(db_err)?,
        on_limit: policy_from(row.try_get("on_limit").map_err(db_err)?),
    })
}

const UPSERT_PUBLISHER: &str = "INSERT INTO publishers
        (id, enabled, takeover_enabled, default_session_limit, unknown_offers, verification_key, jwks_uri,
         on_limit, customer_session_limit)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)";

#[async_trait]
impl SettingsRepo for SqliteSettings {
    async fn catalog(&self, publisher_id: &str) -> Result<Option<Catalog>, SettingsError> {
        let Some(row) = sqlx::query("SELECT * FROM publishers WHERE id = ?")
            .bind(publisher_id)
            .fetch_optional(&self.db)
            .await
            .map_err(db_err)?
        else {
            return Ok(None);
        };
        let publisher = publisher_from_row(&row)?;
        let offers = sqlx::query("SELECT * FROM offers WHERE publisher_id = ? ORDER BY id")
            .bind(publisher_id)
            .fetch_all(&self.db)
            .await
            .map_err(db_err)?
            .iter()
            .map(offer_from_row)
            .collect::<Result<_, _>>()?;
        let overridden: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM customer_overrides WHERE publisher_id = ?)")
                .bind(publisher_id)
                .fetch_one(&self.db)
                .await
                .map_err(db_err)?;
        Ok(Some(Catalog {
            publisher,
            offers,
            overridden,
        }))
    }

    async fn create_publisher(&self, publisher: &Publisher) -> Result<Catalog, SettingsError> {
        bind_publisher(
            sqlx::query(&format!("{UPSERT_PUBLISHER} ON CONFLICT (id) DO NOTHING")),
            publisher,
        )
        .execute(&self.db)
        .await
        .map_err(db_err)?;
        self.catalog(&publisher.id)
            .await?
            .ok_or_else(|| SettingsError::Database("publisher vanished after insert".into()))
    }

    async fn put_publisher(&self, publisher: &Publisher) -> Result<(), SettingsError> {
        let sql = format!(
            "{UPSERT_PUBLISHER} ON CONFLICT (id) DO UPDATE SET
                enabled = excluded.enabled,
                takeover_enabled = excluded.takeover_enabled,
                default_session_limit = excluded.default_session_limit,
                unknown_offers = excluded.unknown_offers,
                verification_key = excluded.verification_key,
                jwks_uri = excluded.jwks_uri,
                on_limit = excluded.on_limit,
                customer_session_limit = excluded.customer_session_limit,
                updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
        );
        bind_publisher(sqlx::query(&sql), publisher)
            .execute(&self.db)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn publishers_after(&self, after: Option<&str>, limit: u32) -> Result<Vec<Publisher>, SettingsError> {
        // SQLite compares TEXT by bytes (BINARY), the order of the primary key.
        sqlx::query("SELECT * FROM publishers WHERE ?1 IS NULL OR id > ?1 ORDER BY id LIMIT ?2")
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.db)
            .await
            .map_err(db_err)?
            .iter()
            .map(publisher_from_row)
            .collect()
    }

    async fn put_offer(&self, publisher_id: &str, offer: &Offer) -> Result<(), SettingsError> {
        let tags = serde_json::to_string(&offer.tags).map_err(db_err)?;
        sqlx::query(
            "INSERT INTO offers (publisher_id, id, session_limit, tags, takeover_enabled, on_limit)
             VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (publisher_id, id) DO UPDATE SET
                session_limit = excluded.session_limit,
                tags = excluded.tags,
                takeover_enabled = excluded.takeover_enabled,
                on_limit = excluded.on_limit",
        )
        .bind(publisher_id)
        .bind(&offer.id)
        .bind(offer.session_limit)
        .bind(tags)
        .bind(offer.takeover_enabled)
        .bind(offer.on_limit.map(LimitPolicy::as_str))
        .execute(&self.db)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn delete_offer(&self, publisher_id: &str, offer_id: &str) -> Result<bool, SettingsError> {
        let done = sqlx::query("DELETE FROM offers WHERE publisher_id = ? AND id = ?")
            .bind(publisher_id)
            .bind(offer_id)
            .execute(&self.db)
            .await
            .map_err(db_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn customer_override(&self, key: &OverrideKey) -> Result<Option<CustomerOverride>, SettingsError> {
        let row: Option<(u32, Option<i64>)> = sqlx::query_as(
            "SELECT session_limit, expires_at FROM customer_overrides
             WHERE publisher_id = ? AND customer_id = ? AND offer_id = ?",
        )
        .bind(&key.publisher_id)
        .bind(&key.customer_id)
        .bind(&key.offer_id)
        .fetch_optional(&self.db)
        .await
        .map_err(db_err)?;
        Ok(row.map(|(session_limit, expires_at)| CustomerOverride {
            session_limit,
            expires_at: expires_at.map(|at| u64::try_from(at).unwrap_or(0)),
        }))
    }

    async fn put_override(&self, key: &OverrideKey, value: &CustomerOverride) -> Result<(), SettingsError> {
        sqlx::query(
            "INSERT INTO customer_overrides (publisher_id, customer_id, offer_id, session_limit, expires_at)
             VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (publisher_id, customer_id, offer_id) DO UPDATE SET
                session_limit = excluded.session_limit,
                expires_at = excluded.expires_at,
                updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        )
        .bind(&key.publisher_id)
        .bind(&key.customer_id)
        .bind(&key.offer_id)
        .bind(value.session_limit)
        .bind(value.expires_at.map(|at| i64::try_from(at).unwrap_or(i64::MAX)))
        .execute(&self.db)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn delete_override(&self, key: &OverrideKey) -> Result<bool, SettingsError> {
        let done =
            sqlx::query("DELETE FROM customer_overrides WHERE publisher_id = ? AND customer_id = ? AND offer_id = ?")
                .bind(&key.publisher_id)
                .bind(&key.customer_id)
                .bind(&key.offer_id)
                .execute(&self.db)
                .await
                .map_err(db_err)?;
        Ok(done.rows_affected() > 0)
    }
}

fn bind_publisher<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    p: &'q Publisher,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    query
        .bind(&p.id)
        .bind(p.enabled)
        .bind(p.takeover_enabled)
        .bind(p.default_session_limit)
        .bind(p.unknown_offers.as_str())
        .bind(p.verification_key.as_deref())
        .bind(p.jwks_uri.as_deref())
        .bind(p.on_limit.as_str())
        .bind(p.customer_session_limit)
}

/// Cuts `rows` into statements of a power-of-two row count, `most` at most (a
/// power of two): sqlx keeps each statement shape prepared on every connection
/// (up to 100), and a shape per row count made them pile up: memory that grew for
/// as long as new counts came up (bench/analysis.md, "Soak: where RSS crept").
/// With these, log2(`most`) + 1 shapes per statement stay prepared.
pub(crate) fn statements<T>(mut rows: &[T], most: usize) -> impl Iterator<Item = &[T]> {
    debug_assert!(most.is_power_of_two());
    std::iter::from_fn(move || {
        if rows.is_empty() {
            return None;
        }
        let size = if rows.len() >= most {
            most
        } else {
            1 << rows.len().ilog2()
        };
        let (head, tail) = rows.split_at(size);
        rows = tail;
        Some(head)
    })
}

/// `SELECT 1`: the pool still lends a working connection. A full disk shows in
/// writes only, not here.
#[async_trait]
impl Probe for SqliteSettings {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    async fn check(&self) -> Result<(), String> {
        sqlx::query("SELECT 1")
            .execute(&self.db)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

#[async_trait]
impl SessionArchive for SqliteSettings {
    async fn save(&self, sessions: &[(PoolKey, Session)]) -> Result<(), SettingsError> {
        self.journal.save(sessions).await
    }

    async fn take(&self) -> Result<Vec<(PoolKey, Session)>, SettingsError> {
        self.journal.take().await
    }

    async fn held_into(&self, into: HeldSink) -> Result<(), SettingsError> {
        self.journal.held_into(into).await
    }

    async fn write(&self, batch: &JournalBatch) -> Result<(), SettingsError> {
        self.journal.write(batch).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_cover_every_row_in_order_in_ten_shapes() {
        const WRITE_CHUNK: usize = 512;
        let mut shapes = std::collections::BTreeSet::new();
        for n in 0..=3 * WRITE_CHUNK {
            let rows: Vec<usize> = (0..n).collect();
            let mut seen = Vec::new();
            for chunk in statements(&rows, WRITE_CHUNK) {
                assert!(
                    chunk.len().is_power_of_two() && chunk.len() <= WRITE_CHUNK,
                    "{n}: {}",
                    chunk.len()
                );
                shapes.insert(chunk.len());
                seen.extend_from_slice(chunk);
            }
            assert_eq!(seen, rows, "{n} rows");
        }
        assert_eq!(shapes.len(), 10, "{shapes:?}");
    }

    /// Versions before the journal had a file of its own kept it in the settings
    /// database: the first start of this one moves those rows, and they are gone
    /// from the old table (a second start finds nothing to move).
    #[tokio::test]
    async fn a_journal_kept_in_the_settings_database_is_moved_to_its_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("drisc.db");
        SqliteSettings::open(&path).await.unwrap().close().await;
        let old = SqlitePool::connect_with(SqliteConnectOptions::new().filename(&path))
            .await
            .unwrap();
        let id = crate::store::saved::write_old_row(&old, "live", 1, 2).await;

        let settings = SqliteSettings::open(&path).await.unwrap();
        let held = settings.held().await.unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].1.id.to_string(), id);
        assert_eq!((held[0].0.customer_id(), held[0].1.name.as_str()), ("c", "TV"));
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM held_sessions")
            .fetch_one(&old)
            .await
            .unwrap();
        assert_eq!(
            left, 0,
            "the old table is emptied once the rows are in the journal's file"
        );
        assert!(crate::store::sqlite_journal::path_for(&path).exists());
        settings.close().await;
        old.close().await;

        let again = SqliteSettings::open(&path).await.unwrap();
        assert_eq!(again.held().await.unwrap().len(), 1, "moved once, kept");
        again.close().await;
    }
}
