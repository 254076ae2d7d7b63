//! Settings, server secrets and saved sessions in an embedded SQLite database.

use std::path::Path;
use std::str::FromStr;

use anyhow::Context;
use async_trait::async_trait;
use rand::RngCore;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow};
use sqlx::{Row, SqlitePool};

use super::saved::SavedRow;
use super::{ServerData, SettingsDb};
use crate::config::StorageSettings;
use crate::domain::journal::{Ended, JournalBatch};
use crate::domain::policy::{CustomerOverride, LimitPolicy, OverrideKey};
use crate::domain::ports::{SessionArchive, SettingsError, SettingsRepo};
use crate::domain::settings::{Catalog, Offer, Publisher, UnknownOffers};
use crate::domain::{PoolKey, Session};
use crate::readiness::Probe;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// SQLite's page cache per connection, in KiB: 4 connections hold at most 2 MiB.
const CACHE_KIB: u32 = 512;

/// The name of the session journal's SQLite thread (`ps -eLo tid,ni,comm`).
const JOURNAL_THREAD: &str = "drisc-journal";

#[derive(Clone)]
pub struct SqliteSettings {
    db: SqlitePool,
    /// The session journal's own connection, opened at its first write, whose
    /// SQLite thread runs at the lowest priority: the journal writes a row per
    /// session granted and ended, tens of thousands a second at full load, in
    /// bursts once a second; on the server's core at normal priority those bursts
    /// took the CPU from admissions and made their latency tail (bench/analysis.md,
    /// "The tail, round five"). At the lowest priority it takes only what
    /// admissions leave, which at any load short of saturation is plenty. Its
    /// transactions then hold SQLite's write lock longer on a saturated node, so
    /// a settings or outbox write may wait behind one (SQLite's busy timeout, 5 s).
    journal: SqlitePool,
}

fn db_err(e: impl std::fmt::Display) -> SettingsError {
    SettingsError::Database(e.to_string())
}

impl SqliteSettings {
    /// Opens (creating if needed) the database file and applies pending migrations.
    /// The file is made 0600 before SQLite opens it: SQLite gives the -wal and -shm
    /// files it creates the database file's mode.
    pub async fn open(path: &Path) -> anyhow::Result<Self> {
        super::private_files::ensure_private_file(path, true)?;
        for suffix in ["-wal", "-shm"] {
            let mut companion = path.as_os_str().to_owned();
            companion.push(suffix);
            super::private_files::ensure_private_file(Path::new(&companion), false)?;
        }
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            // Each connection's page cache, in KiB (SQLite's default: 2,000): a bound on
            // what the pool's 4 connections can hold as the journal's keys move on with
            // the sessions (not what made the soak's RSS creep: that was prepared
            // statements, see `statements`). The working set is the journal's newest
            // pages and the tree's inner pages; the rest is in the OS's page cache, a
            // read away (`benches/journal.rs`: no measurable cost).
            .pragma("cache_size", format!("-{CACHE_KIB}"));
        let db = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&db).await?;
        let journal = SqlitePoolOptions::new()
            .max_connections(1)
            .after_connect(|_, _| {
                Box::pin(async {
                    // The connection's thread exists (and is named) once it is open.
                    if crate::threads::lower_named(JOURNAL_THREAD, crate::threads::LOWEST) == 0 {
                        tracing::debug!("the session journal's SQLite thread keeps its priority");
                    }
                    Ok(())
                })
            })
            .connect_lazy_with(options.thread_name(|_| JOURNAL_THREAD.to_owned()));
        Ok(Self { db, journal })
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
        self.journal.close().await;
        self.db.close().await;
    }

    /// The connections, for the webhooks' outbox (`store::outbox`).
    pub(super) fn pool(&self) -> &SqlitePool {
        &self.db
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
    Ok(SettingsDb::of(db))
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

/// The most rows per statement when writing held sessions (a power of two, see
/// [`statements`]): 8 parameters each, well below SQLite's limit of 32,766.
const WRITE_CHUNK: usize = 512;

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

/// Inserts or replaces the rows of `sessions`, many per statement: a batch of the
/// journal can hold every session of a restart.
async fn upsert<'a>(
    tx: &mut sqlx::SqliteConnection,
    sessions: impl IntoIterator<Item = (&'a PoolKey, &'a Session)>,
) -> Result<(), SettingsError> {
    let sessions: Vec<_> = sessions.into_iter().collect();
    for chunk in statements(&sessions, WRITE_CHUNK) {
        let mut query = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT OR REPLACE INTO held_sessions
                (session_id, publisher_id, customer_id, offer_id, name, state, expires_at, created_at) ",
        );
        query.push_values(chunk, |mut row, (pool, s)| {
            row.push_bind(s.id.to_string())
                .push_bind(pool.publisher_id.as_str())
                .push_bind(pool.customer_id.as_str())
                .push_bind(pool.offer_id.as_str())
                .push_bind(s.name.as_str())
                .push_bind(s.state.as_str())
                .push_bind(s.expires_at as i64)
                .push_bind(s.created_at as i64);
        });
        query.build().execute(&mut *tx).await.map_err(db_err)?;
    }
    Ok(())
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
        let mut tx = self.db.begin().await.map_err(db_err)?;
        upsert(&mut tx, sessions.iter().map(|(pool, s)| (pool, s))).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn take(&self) -> Result<Vec<(PoolKey, Session)>, SettingsError> {
        let mut tx = self.db.begin().await.map_err(db_err)?;
        let rows = sqlx::query_as::<_, SavedRow>("SELECT * FROM held_sessions")
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
        sqlx::query("DELETE FROM held_sessions")
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(rows.into_iter().filter_map(SavedRow::into_saved).collect())
    }

    async fn held(&self) -> Result<Vec<(PoolKey, Session)>, SettingsError> {
        let rows = sqlx::query_as::<_, SavedRow>("SELECT * FROM held_sessions")
            .fetch_all(&self.db)
            .await
            .map_err(db_err)?;
        Ok(rows.into_iter().filter_map(SavedRow::into_saved).collect())
    }

    async fn write(&self, batch: &JournalBatch) -> Result<(), SettingsError> {
        // In key order, so the B-tree is walked one way and each page is dirtied once
        // (the key is (created_at, session_id), see the held_sessions_by_age migration).
        let mut put: Vec<(&PoolKey, &Session)> = batch.put.iter().map(|(pool, s)| (&**pool, s)).collect();
        put.sort_unstable_by_key(|(_, s)| s.created_at);
        let mut delete: Vec<&Ended> = batch.delete.iter().collect();
        delete.sort_unstable_by_key(|ended| ended.created_at);
        let mut tx = self.journal.begin().await.map_err(db_err)?;
        upsert(&mut tx, put).await?;
        for chunk in statements(&delete, WRITE_CHUNK) {
            // A row value IN a subquery: SQLite looks each key up in the primary key
            // (an IN over a VALUES list would scan the table).
            let mut query = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "DELETE FROM held_sessions WHERE (created_at, session_id) IN (SELECT column1, column2 FROM (VALUES ",
            );
            let mut rows = query.separated(", ");
            for ended in chunk {
                rows.push("(")
                    .push_bind_unseparated(ended.created_at as i64)
                    .push_unseparated(", ")
                    .push_bind_unseparated(ended.id.to_string())
                    .push_unseparated(")");
            }
            query.push("))");
            query.build().execute(&mut *tx).await.map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_statements_cover_every_row_in_order_in_ten_shapes() {
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
}
