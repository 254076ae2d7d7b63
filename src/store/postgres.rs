//! Settings, server secrets and saved sessions in PostgreSQL, shared by the nodes
//! of a cluster. Behaves as [`super::SqliteSettings`] does; where several nodes may
//! race (first sight of a publisher, a server secret, taking the saved sessions),
//! every operation is one statement that PostgreSQL makes atomic.
//!
//! An outage is an error, never a hang: a connection is waited for at most
//! [`ACQUIRE_TIMEOUT`], every operation is bounded by a deadline, and dead pooled
//! connections are replaced on their next use, so the repository recovers by itself
//! when the server comes back.

use std::collections::HashMap;
use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use futures_util::TryStreamExt;
use rand::RngCore;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPoolOptions, PgRow, PgSslMode};
use sqlx::{PgPool, Postgres, Row};

use super::saved::SavedRow;
use super::sqlite::policy_from;
use super::{ServerData, SettingsDb};
use crate::config::StorageSettings;
use crate::domain::journal::JournalBatch;
use crate::domain::policy::{CustomerOverride, LimitPolicy, OverrideKey};
use crate::domain::ports::{HELD_CHUNK, HeldSink, SessionArchive, SettingsError, SettingsRepo};
use crate::domain::settings::{Catalog, Offer, Publisher, UnknownOffers};
use crate::domain::{PoolKey, Session, SessionId};
use crate::readiness::Probe;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How long an operation waits for a pooled connection before failing.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// The most one settings operation may take, waiting for a connection included.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);
/// The most saving or taking the held sessions may take (they can be many).
const ARCHIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// The most the migrations may take at start, waiting for another node's included.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node starting waits for its first connection: longer than a request
/// waits ([`ACQUIRE_TIMEOUT`]), as a busy server or many nodes starting at once can
/// take seconds to open connections, and a node that cannot start is worse than
/// one that starts late.
const START_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Rows per statement when writing held sessions.
const SAVE_CHUNK: usize = 5_000;

#[derive(Clone)]
pub struct PostgresSettings {
    db: PgPool,
}

fn db_err(e: impl std::fmt::Display) -> SettingsError {
    SettingsError::Database(e.to_string())
}

/// Runs `op`, failing with a database error if it takes longer than `limit`.
async fn bounded<T>(limit: Duration, op: impl Future<Output = Result<T, SettingsError>>) -> Result<T, SettingsError> {
    tokio::time::timeout(limit, op).await.unwrap_or_else(|_| {
        Err(SettingsError::Database(format!(
            "no answer from PostgreSQL within {limit:?}"
        )))
    })
}

/// The saved sessions of the rows `sql` returns, each row converted as it
/// arrives: the rows' texts (six strings each) are never all held at once
/// beside the sessions made of them, as a `fetch_all` held them.
async fn saved_sessions(sql: &'static str, db: &PgPool) -> Result<Vec<(PoolKey, Session)>, SettingsError> {
    let mut rows = sqlx::query_as::<_, SavedRow>(sql).fetch(db);
    let mut sessions = Vec::new();
    while let Some(row) = rows.try_next().await.map_err(db_err)? {
        sessions.extend(row.into_saved());
    }
    Ok(sessions)
}

impl PostgresSettings {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db`) and
    /// applies pending migrations. Nodes starting at once are safe: the migrations run
    /// under PostgreSQL advisory lock, so one node applies them and the others wait.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        Self::connect_with(PgConnectOptions::from_str(url)?).await
    }

    /// As [`Self::connect`], with options built by the caller (TLS, see [`connect_options`]).
    pub async fn connect_with(options: PgConnectOptions) -> anyhow::Result<Self> {
        let options = options.application_name("drisc");
        // Migrate on a connection of its own, closed afterwards: the advisory lock
        // belongs to the session, and a failed migration must not leave it held on a
        // connection that the pool would go on lending.
        let migrate = async {
            let single = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(START_CONNECT_TIMEOUT)
                .connect_with(options.clone())
                .await?;
            let outcome = MIGRATOR.run(&single).await;
            single.close().await;
            outcome.map_err(anyhow::Error::from)
        };
        tokio::time::timeout(MIGRATE_TIMEOUT, migrate)
            .await
            .map_err(|_| anyhow::anyhow!("PostgreSQL migrations did not finish within {MIGRATE_TIMEOUT:?}"))??;
        // Lazy: the migrations have just shown that the server answers, and the first
        // request opens a connection (within ACQUIRE_TIMEOUT) as any later one does.
        let db = PgPoolOptions::new()
            .max_connections(4)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .idle_timeout(Duration::from_secs(300))
            // Checks a pooled connection before lending it, so connections broken by a
            // restart of the server are replaced rather than failing a request.
            .test_before_acquire(true)
            .connect_lazy_with(options);
        Ok(Self { db })
    }

    /// The secret named `name`, created at random on first use so it survives restarts.
    /// Nodes asking at once all get the one that was stored first.
    pub async fn secret(&self, name: &str) -> Result<String, SettingsError> {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let fresh: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        bounded(OPERATION_TIMEOUT, async {
            sqlx::query("INSERT INTO server_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
                .bind(name)
                .bind(&fresh)
                .execute(&self.db)
                .await
                .map_err(db_err)?;
            sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = $1")
                .bind(name)
                .fetch_one(&self.db)
                .await
                .map_err(db_err)
        })
        .await
    }

    pub async fn close(&self) {
        self.db.close().await;
    }

    /// The connections, for the webhooks' outbox (`store::outbox`).
    pub(super) fn pool(&self) -> &PgPool {
        &self.db
    }
}

/// Opens the cluster's settings database at `storage.postgres_url`.
pub async fn open(storage: &StorageSettings) -> anyhow::Result<SettingsDb> {
    let db = PostgresSettings::connect_with(connect_options(storage)?)
        .await
        .context("cannot open the PostgreSQL database (storage.postgres_url)")?;
    Ok(SettingsDb::of(db, false))
}

/// `storage.postgres_url` with the TLS settings beside it applied over what the
/// URL says (`sslmode`, `sslrootcert`, `sslcert`, `sslkey` in the URL are
/// honoured when the settings are empty).
pub fn connect_options(storage: &StorageSettings) -> anyhow::Result<PgConnectOptions> {
    crate::store::redis::tls::install_crypto_provider();
    let mut options =
        PgConnectOptions::from_str(&storage.postgres_url).context("storage.postgres_url is not a PostgreSQL URL")?;
    if !storage.postgres_sslmode.is_empty() {
        let mode = PgSslMode::from_str(&storage.postgres_sslmode).context("storage.postgres_sslmode")?;
        options = options.ssl_mode(mode);
    }
    if !storage.postgres_ca_file.is_empty() {
        options = options.ssl_root_cert(&storage.postgres_ca_file);
    }
    if !storage.postgres_client_cert.is_empty() {
        options = options.ssl_client_cert(&storage.postgres_client_cert);
    }
    if !storage.postgres_client_key.is_empty() {
        options = options.ssl_client_key(&storage.postgres_client_key);
    }
    Ok(options)
}

#[async_trait]
impl ServerData for PostgresSettings {
    async fn secret(&self, name: &str) -> Result<String, SettingsError> {
        PostgresSettings::secret(self, name).await
    }

    async fn close(&self) {
        PostgresSettings::close(self).await;
    }
}

fn limit_from(value: i64) -> Result<u32, SettingsError> {
    u32::try_from(value).map_err(|_| SettingsError::Database(format!("session limit {value} out of range")))
}

fn publisher_from_row(row: &PgRow) -> Result<Publisher, SettingsError> {
    let unknown: String = row.try_get("unknown_offers").map_err(db_err)?;
    Ok(Publisher {
        id: row.try_get("id").map_err(db_err)?,
        enabled: row.try_get("enabled").map_err(db_err)?,
        takeover_enabled: row.try_get("takeover_enabled").map_err(db_err)?,
        default_session_limit: limit_from(row.try_get("default_session_limit").map_err(db_err)?)?,
        unknown_offers: UnknownOffers::parse(&unknown).unwrap_or_default(),
        verification_key: row.try_get("verification_key").map_err(db_err)?,
        jwks_uri: row.try_get("jwks_uri").map_err(db_err)?,
        on_limit: policy_from(row.try_get("on_limit").map_err(db_err)?).unwrap_or_default(),
        customer_session_limit: row
            .try_get::<Option<i64>, _>("customer_session_limit")
            .map_err(db_err)?
            .map(limit_from)
            .transpose()?,
    })
}

/// The offer in a row of [`CATALOG`], if the row has one.
fn offer_from_row(row: &PgRow) -> Result<Option<Offer>, SettingsError> {
    let Some(id) = row.try_get::<Option<String>, _>("offer_id").map_err(db_err)? else {
        return Ok(None);
    };
    Ok(Some(Offer {
        id,
        session_limit: limit_from(row.try_get("offer_session_limit").map_err(db_err)?)?,
        tags: row.try_get("offer_tags").map_err(db_err)?,
        takeover_enabled: row.try_get("offer_takeover_enabled").map_err(db_err)?,
        on_limit: policy_from(row.try_get("offer_on_limit").map_err(db_err)?),
    }))
}

const PUBLISHER_COLUMNS: &str = "id, enabled, takeover_enabled, default_session_limit, unknown_offers, \
    verification_key, jwks_uri, on_limit, customer_session_limit";

/// A publisher with its offers in one statement, so one consistent snapshot: one row
/// per offer, or one row with NULL offer columns when it has none. Ids are ordered
/// byte-wise (`COLLATE "C"`), as SQLite orders them, whatever the database's locale.
const CATALOG: &str = r#"SELECT p.id, p.enabled, p.takeover_enabled, p.default_session_limit,
        p.unknown_offers, p.verification_key, p.jwks_uri, p.on_limit, p.customer_session_limit,
        EXISTS (SELECT 1 FROM customer_overrides c WHERE c.publisher_id = p.id) AS overridden,
        o.id AS offer_id, o.session_limit AS offer_session_limit, o.tags AS offer_tags,
        o.takeover_enabled AS offer_takeover_enabled, o.on_limit AS offer_on_limit
    FROM publishers p LEFT JOIN offers o ON o.publisher_id = p.id
    WHERE p.id = $1
    ORDER BY o.id COLLATE "C""#;

const INSERT_PUBLISHER: &str = "INSERT INTO publishers
        (id, enabled, takeover_enabled, default_session_limit, unknown_offers, verification_key, jwks_uri,
         on_limit, customer_session_limit)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

fn bind_publisher<'q>(query: PgQuery<'q>, p: &'q Publisher) -> PgQuery<'q> {
    query
        .bind(&p.id)
        .bind(p.enabled)
        .bind(p.takeover_enabled)
        .bind(i64::from(p.default_session_limit))
        .bind(p.unknown_offers.as_str())
        .bind(p.verification_key.as_deref())
        .bind(p.jwks_uri.as_deref())
        .bind(p.on_limit.as_str())
        .bind(p.customer_session_limit.map(i64::from))
}

impl PostgresSettings {
    async fn read_catalog(&self, publisher_id: &str) -> Result<Option<Catalog>, SettingsError> {
        let rows = sqlx::query(CATALOG)
            .bind(publisher_id)
            .fetch_all(&self.db)
            .await
            .map_err(db_err)?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let publisher = publisher_from_row(first)?;
        let overridden: bool = first.try_get("overridden").map_err(db_err)?;
        let mut offers = Vec::with_capacity(rows.len());
        for row in &rows {
            offers.extend(offer_from_row(row)?);
        }
        Ok(Some(Catalog {
            publisher,
            offers,
            overridden,
        }))
    }
}

#[async_trait]
impl SettingsRepo for PostgresSettings {
    async fn catalog(&self, publisher_id: &str) -> Result<Option<Catalog>, SettingsError> {
        bounded(OPERATION_TIMEOUT, self.read_catalog(publisher_id)).await
    }

    async fn create_publisher(&self, publisher: &Publisher) -> Result<Catalog, SettingsError> {
        bounded(OPERATION_TIMEOUT, async {
            // A concurrent insert of the same id waits for the other to commit, then
            // does nothing; either way the row is there to read afterwards.
            let sql = format!("{INSERT_PUBLISHER} ON CONFLICT (id) DO NOTHING");
            bind_publisher(sqlx::query(&sql), publisher)
                .execute(&self.db)
                .await
                .map_err(db_err)?;
            self.read_catalog(&publisher.id)
                .await?
                .ok_or_else(|| SettingsError::Database("publisher vanished after insert".into()))
        })
        .await
    }

    async fn put_publisher(&self, publisher: &Publisher) -> Result<(), SettingsError> {
        let sql = format!(
            "{INSERT_PUBLISHER} ON CONFLICT (id) DO UPDATE SET
                enabled = excluded.enabled,
                takeover_enabled = excluded.takeover_enabled,
                default_session_limit = excluded.default_session_limit,
                unknown_offers = excluded.unknown_offers,
                verification_key = excluded.verification_key,
                jwks_uri = excluded.jwks_uri,
                on_limit = excluded.on_limit,
                customer_session_limit = excluded.customer_session_limit,
                updated_at = now()"
        );
        bounded(OPERATION_TIMEOUT, async {
            bind_publisher(sqlx::query(&sql), publisher)
                .execute(&self.db)
                .await
                .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn publishers_after(&self, after: Option<&str>, limit: u32) -> Result<Vec<Publisher>, SettingsError> {
        // Byte order ("C"), as SQLite sorts, whatever the database's collation.
        let sql = format!(
            r#"SELECT {PUBLISHER_COLUMNS} FROM publishers
               WHERE $1::text IS NULL OR id COLLATE "C" > $1
               ORDER BY id COLLATE "C" LIMIT $2"#
        );
        bounded(OPERATION_TIMEOUT, async {
            sqlx::query(&sql)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.db)
                .await
                .map_err(db_err)?
                .iter()
                .map(publisher_from_row)
                .collect()
        })
        .await
    }

    async fn put_offer(&self, publisher_id: &str, offer: &Offer) -> Result<(), SettingsError> {
        bounded(OPERATION_TIMEOUT, async {
            sqlx::query(
                "INSERT INTO offers (publisher_id, id, session_limit, tags, takeover_enabled, on_limit)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (publisher_id, id) DO UPDATE SET
                    session_limit = excluded.session_limit,
                    tags = excluded.tags,
                    takeover_enabled = excluded.takeover_enabled,
                    on_limit = excluded.on_limit",
            )
            .bind(publisher_id)
            .bind(&offer.id)
            .bind(i64::from(offer.session_limit))
            .bind(&offer.tags)
            .bind(offer.takeover_enabled)
            .bind(offer.on_limit.map(LimitPolicy::as_str))
            .execute(&self.db)
            .await
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn delete_offer(&self, publisher_id: &str, offer_id: &str) -> Result<bool, SettingsError> {
        bounded(OPERATION_TIMEOUT, async {
            let done = sqlx::query("DELETE FROM offers WHERE publisher_id = $1 AND id = $2")
                .bind(publisher_id)
                .bind(offer_id)
                .execute(&self.db)
                .await
                .map_err(db_err)?;
            Ok(done.rows_affected() > 0)
        })
        .await
    }

    async fn customer_override(&self, key: &OverrideKey) -> Result<Option<CustomerOverride>, SettingsError> {
        bounded(OPERATION_TIMEOUT, async {
            let row: Option<(i64, Option<i64>)> = sqlx::query_as(
                "SELECT session_limit, expires_at FROM customer_overrides
                 WHERE publisher_id = $1 AND customer_id = $2 AND offer_id = $3",
            )
            .bind(&key.publisher_id)
            .bind(&key.customer_id)
            .bind(&key.offer_id)
            .fetch_optional(&self.db)
            .await
            .map_err(db_err)?;
            row.map(|(limit, expires_at)| {
                Ok(CustomerOverride {
                    session_limit: limit_from(limit)?,
                    expires_at: expires_at.map(|at| u64::try_from(at).unwrap_or(0)),
                })
            })
            .transpose()
        })
        .await
    }

    async fn put_override(&self, key: &OverrideKey, value: &CustomerOverride) -> Result<(), SettingsError> {
        bounded(OPERATION_TIMEOUT, async {
            sqlx::query(
                "INSERT INTO customer_overrides (publisher_id, customer_id, offer_id, session_limit, expires_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (publisher_id, customer_id, offer_id) DO UPDATE SET
                    session_limit = excluded.session_limit,
                    expires_at = excluded.expires_at,
                    updated_at = now()",
            )
            .bind(&key.publisher_id)
            .bind(&key.customer_id)
            .bind(&key.offer_id)
            .bind(i64::from(value.session_limit))
            .bind(value.expires_at.map(|at| i64::try_from(at).unwrap_or(i64::MAX)))
            .execute(&self.db)
            .await
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn delete_override(&self, key: &OverrideKey) -> Result<bool, SettingsError> {
        bounded(OPERATION_TIMEOUT, async {
            let done = sqlx::query(
                "DELETE FROM customer_overrides WHERE publisher_id = $1 AND customer_id = $2 AND offer_id = $3",
            )
            .bind(&key.publisher_id)
            .bind(&key.customer_id)
            .bind(&key.offer_id)
            .execute(&self.db)
            .await
            .map_err(db_err)?;
            Ok(done.rows_affected() > 0)
        })
        .await
    }
}

/// Inserts or replaces the rows of `sessions` (each id at most once), in chunks of
/// one statement each.
async fn upsert(tx: &mut sqlx::PgConnection, sessions: &[(&PoolKey, &Session)]) -> Result<(), SettingsError> {
    for chunk in sessions.chunks(SAVE_CHUNK) {
        let mut columns: [Vec<String>; 6] = Default::default();
        let mut expires_at = Vec::with_capacity(chunk.len());
        let mut created_at = Vec::with_capacity(chunk.len());
        for (pool, s) in chunk {
            columns[0].push(s.id.to_string());
            columns[1].push(pool.publisher_id().to_owned());
            columns[2].push(pool.customer_id().to_owned());
            columns[3].push(pool.offer_id().to_owned());
            columns[4].push(s.name.clone());
            columns[5].push(s.state.as_str().to_owned());
            expires_at.push(s.expires_at as i64);
            created_at.push(s.created_at as i64);
        }
        let [ids, publishers, customers, offers, names, states] = columns;
        sqlx::query(
            "INSERT INTO held_sessions
                (session_id, publisher_id, customer_id, offer_id, name, state, expires_at, created_at)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::text[], $7::bigint[], $8::bigint[])
             ON CONFLICT (session_id) DO UPDATE SET
                publisher_id = excluded.publisher_id,
                customer_id = excluded.customer_id,
                offer_id = excluded.offer_id,
                name = excluded.name,
                state = excluded.state,
                expires_at = excluded.expires_at,
                created_at = excluded.created_at",
        )
        .bind(ids)
        .bind(publishers)
        .bind(customers)
        .bind(offers)
        .bind(names)
        .bind(states)
        .bind(expires_at)
        .bind(created_at)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    }
    Ok(())
}

/// `SELECT 1`, through the pool admission uses, which replaces connections a restart broke.
#[async_trait]
impl Probe for PostgresSettings {
    fn name(&self) -> &'static str {
        "postgres"
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
impl SessionArchive for PostgresSettings {
    async fn save(&self, sessions: &[(PoolKey, Session)]) -> Result<(), SettingsError> {
        // A session saved twice keeps its last copy, as SQLite's INSERT OR REPLACE
        // does; one statement may not touch a row twice, so duplicates go first.
        let mut last: HashMap<SessionId, usize> = HashMap::with_capacity(sessions.len());
        for (i, (_, s)) in sessions.iter().enumerate() {
            last.insert(s.id, i);
        }
        let unique: Vec<(&PoolKey, &Session)> = sessions
            .iter()
            .enumerate()
            .filter(|(i, (_, s))| last.get(&s.id) == Some(i))
            .map(|(_, (pool, s))| (pool, s))
            .collect();
        bounded(ARCHIVE_TIMEOUT, async {
            let mut tx = self.db.begin().await.map_err(db_err)?;
            upsert(&mut tx, &unique).await?;
            tx.commit().await.map_err(db_err)
        })
        .await
    }

    /// A journal batch names each session once, so it needs no de-duplication.
    async fn write(&self, batch: &JournalBatch) -> Result<(), SettingsError> {
        let put: Vec<(&PoolKey, &Session)> = batch.put.iter().map(|(pool, s)| (&**pool, s)).collect();
        let delete: Vec<String> = batch.delete.iter().map(|ended| ended.id.to_string()).collect();
        bounded(ARCHIVE_TIMEOUT, async {
            let mut tx = self.db.begin().await.map_err(db_err)?;
            upsert(&mut tx, &put).await?;
            if !delete.is_empty() {
                sqlx::query("DELETE FROM held_sessions WHERE session_id = ANY($1::text[])")
                    .bind(delete)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
            }
            tx.commit().await.map_err(db_err)
        })
        .await
    }

    /// Each row's wait is bounded, not the whole reading: the reading lasts as
    /// long as the start takes to restore what it sends (seconds a million).
    async fn held_into(&self, into: HeldSink) -> Result<(), SettingsError> {
        let sql = "SELECT session_id, publisher_id, customer_id, offer_id, name, state, expires_at, created_at
                   FROM held_sessions";
        let mut rows = sqlx::query_as::<_, SavedRow>(sql).fetch(&self.db);
        let mut chunk = Vec::with_capacity(HELD_CHUNK);
        while let Some(row) = bounded(ARCHIVE_TIMEOUT, async { rows.try_next().await.map_err(db_err) }).await? {
            chunk.extend(row.into_saved());
            if chunk.len() == HELD_CHUNK {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(HELD_CHUNK));
                if into.send(full).await.is_err() {
                    return Ok(());
                }
            }
        }
        if !chunk.is_empty() {
            let _ = into.send(chunk).await;
        }
        Ok(())
    }

    async fn take(&self) -> Result<Vec<(PoolKey, Session)>, SettingsError> {
        // One statement reads and forgets: nodes taking at once each get their own
        // rows, never the same session twice.
        bounded(
            ARCHIVE_TIMEOUT,
            saved_sessions(
                "DELETE FROM held_sessions RETURNING
                    session_id, publisher_id, customer_id, offer_id, name, state, expires_at, created_at",
                &self.db,
            ),
        )
        .await
    }
}
