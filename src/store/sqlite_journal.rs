//! The session journal's own SQLite database, `<settings file>.sessions.db` beside
//! the settings (`drisc.sessions.db`), written by a thread at nice 19.
//!
//! Why a file of its own: SQLite has one write lock per database file. The journal
//! writes a row per session granted and ended, and its thread yields the core to
//! admissions; in the settings file, a journal transaction held off a busy core
//! kept the lock, and the webhook outbox's writer (at normal priority) waited
//! behind it until its queue overflowed and events were dropped
//! (bench/analysis.md, "Issue 13, round three"). In its own file the journal's
//! lock blocks nobody.
//!
//! sqlx runs each SQLite connection on a thread it starts when the connection is
//! opened, from the thread that opens it, and Linux copies a thread's nice value to
//! the threads it creates: so the connection is opened from a thread already at
//! nice 19 ([`crate::threads::start_lowered`]). Not `SCHED_IDLE`: the channels
//! between the connection's thread and the runtime have mutexes, and a thread in
//! `SCHED_IDLE` preempted beside a busy one holds them for tens of milliseconds,
//! with the runtime's worker waiting (bench/analysis.md, "The tail, round six").
//! One connection, kept open; it is opened again (the same way) after an error.

use std::path::{Path, PathBuf};

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection, SqlitePool};

use super::saved::SavedRow;
use super::sqlite::{OwnConnection, db_err, statements};
use crate::domain::journal::{Ended, JournalBatch};
use crate::domain::ports::SettingsError;
use crate::domain::{PoolKey, Session};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/journal");

/// The name of the journal's SQLite thread (`ps -eLo tid,cls,comm`).
pub(super) const THREAD: &str = "drisc-journal";

/// The most rows per statement when saving held sessions at once (a power of two,
/// see [`statements`]): 8 parameters each, well below SQLite's limit of 32,766.
pub(super) const WRITE_CHUNK: usize = 512;

/// The most rows per statement in the journal's periodic writes: one statement is
/// one uninterrupted run of the connection's thread (about 1.5 µs a row,
/// `benches/journal.rs`), and a thread at nice 19 that the scheduler picks keeps
/// the core until it blocks or the next tick. 128 rows hold it about 0.2 ms; 512
/// held a request worker off the core for up to 1.8 ms (bench/analysis.md, "The
/// tail, round seven"); 64 cost 0.2 µs more per change.
const JOURNAL_CHUNK: usize = 128;

/// The journal's file for the settings database at `settings`: `drisc.db` →
/// `drisc.sessions.db` (not `-journal`: SQLite names its own rollback journal so).
pub fn path_for(settings: &Path) -> PathBuf {
    settings.with_extension("sessions.db")
}

pub(super) struct Journal {
    /// Opened from a thread at nice 19 ([`open_lowered`]).
    conn: OwnConnection,
}

impl Journal {
    /// Opens (creating if needed) the journal's file with the settings' `options`
    /// (WAL, page cache), applies its migrations, and moves in the rows an older
    /// version kept in the settings database (`db`), once.
    pub(super) async fn open(settings: &Path, options: SqliteConnectOptions, db: &SqlitePool) -> anyhow::Result<Self> {
        let path = path_for(settings);
        super::private_files::ensure_private_database(&path)?;
        // Statement journals in memory: each multi-row `INSERT OR REPLACE` keeps one
        // (SQLite must be able to undo the statement alone), and past 64 KiB SQLite
        // spills it to a temporary file, a `pwrite` per page. On a busy node that was
        // a fifth of this connection's CPU (bench/analysis.md, "Admission, round
        // nine"). A statement's journal is bounded by its rows (`JOURNAL_CHUNK`,
        // `WRITE_CHUNK`), so memory is bounded too.
        let options = options
            .filename(&path)
            .thread_name(|_| THREAD.to_owned())
            .pragma("temp_store", "memory");
        let journal = Self {
            conn: OwnConnection::new(options, |options| Box::pin(open_lowered(options))),
        };
        journal
            .with(async |conn| MIGRATOR.run(conn).await.map_err(db_err))
            .await?;
        journal.adopt(db).await?;
        Ok(journal)
    }

    /// Rows of `held_sessions` in the settings database (versions before this file
    /// kept the journal there) are written here, then deleted there. Stopped half-way,
    /// the next start does it again: the writes replace rows by key.
    async fn adopt(&self, db: &SqlitePool) -> Result<(), SettingsError> {
        let rows = sqlx::query_as::<_, SavedRow>("SELECT * FROM held_sessions")
            .fetch_all(db)
            .await
            .map_err(db_err)?;
        if rows.is_empty() {
            return Ok(());
        }
        let sessions: Vec<(PoolKey, Session)> = rows.into_iter().filter_map(SavedRow::into_saved).collect();
        self.save(&sessions).await?;
        sqlx::query("DELETE FROM held_sessions")
            .execute(db)
            .await
            .map_err(db_err)?;
        tracing::info!(
            sessions = sessions.len(),
            "session journal moved from the settings database to its own file"
        );
        Ok(())
    }

    async fn with<T>(
        &self,
        work: impl AsyncFnOnce(&mut SqliteConnection) -> Result<T, SettingsError>,
    ) -> Result<T, SettingsError> {
        self.conn.with(work).await
    }

    pub(super) async fn close(&self) {
        self.conn.close().await;
    }

    /// Saves `sessions` (a shutdown), replacing rows by key.
    pub(super) async fn save(&self, sessions: &[(PoolKey, Session)]) -> Result<(), SettingsError> {
        self.with(async |conn| {
            let mut tx = conn.begin().await.map_err(db_err)?;
            upsert(&mut tx, sessions.iter().map(|(pool, s)| (pool, s)), WRITE_CHUNK).await?;
            tx.commit().await.map_err(db_err)
        })
        .await
    }

    /// Every saved session, deleted as they are read (a start).
    pub(super) async fn take(&self) -> Result<Vec<(PoolKey, Session)>, SettingsError> {
        self.with(async |conn| {
            let mut tx = conn.begin().await.map_err(db_err)?;
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
        })
        .await
    }

    pub(super) async fn held(&self) -> Result<Vec<(PoolKey, Session)>, SettingsError> {
        self.with(async |conn| {
            let rows = sqlx::query_as::<_, SavedRow>("SELECT * FROM held_sessions")
                .fetch_all(&mut *conn)
                .await
                .map_err(db_err)?;
            Ok(rows.into_iter().filter_map(SavedRow::into_saved).collect())
        })
        .await
    }

    pub(super) async fn write(&self, batch: &JournalBatch) -> Result<(), SettingsError> {
        // In key order, so the B-tree is walked one way and each page is dirtied once.
        let mut put: Vec<(&PoolKey, &Session)> = batch.put.iter().map(|(pool, s)| (&**pool, s)).collect();
        put.sort_unstable_by_key(|(_, s)| s.created_at);
        let mut delete: Vec<&Ended> = batch.delete.iter().collect();
        delete.sort_unstable_by_key(|ended| ended.created_at);
        self.with(async |conn| {
            let mut tx = conn.begin().await.map_err(db_err)?;
            upsert(&mut tx, put, JOURNAL_CHUNK).await?;
            for chunk in statements(&delete, JOURNAL_CHUNK) {
                let mut query = sqlx::query(DELETE.for_rows(chunk.len()));
                for ended in chunk {
                    query = query.bind(ended.created_at as i64).bind(ended.id.to_string());
                }
                query.execute(&mut *tx).await.map_err(db_err)?;
            }
            tx.commit().await.map_err(db_err)
        })
        .await
    }
}

/// Opens a connection whose SQLite thread runs at nice 19: opened from a thread at
/// that nice value, on a runtime of its own (the connection then talks to its
/// thread over channels, from any runtime). If that fails, the thread is found by
/// name and lowered.
async fn open_lowered(options: SqliteConnectOptions) -> Result<SqliteConnection, SettingsError> {
    let (opened, not_lowered) = tokio::task::spawn_blocking(move || {
        crate::threads::start_lowered(crate::threads::LOWEST, move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(db_err)?;
            runtime.block_on(options.connect()).map_err(db_err)
        })
    })
    .await
    .map_err(db_err)?;
    if let Some(e) = not_lowered {
        tracing::debug!(error = %e, "the session journal's thread is lowered by name");
        crate::threads::lower_named(THREAD, crate::threads::LOWEST);
    }
    opened
}

/// Inserts or replaces the rows of `sessions`, many per statement: a batch of the
/// journal can hold every session of a restart.
async fn upsert<'a>(
    tx: &mut SqliteConnection,
    sessions: impl IntoIterator<Item = (&'a PoolKey, &'a Session)>,
    rows_per_statement: usize,
) -> Result<(), SettingsError> {
    let sessions: Vec<_> = sessions.into_iter().collect();
    for chunk in statements(&sessions, rows_per_statement) {
        let mut query = sqlx::query(UPSERT.for_rows(chunk.len()));
        for (pool, s) in chunk {
            query = query
                .bind(s.id.to_string())
                .bind(pool.publisher_id())
                .bind(pool.customer_id())
                .bind(pool.offer_id())
                .bind(s.name.as_str())
                .bind(s.state.as_str())
                .bind(s.expires_at as i64)
                .bind(s.created_at as i64);
        }
        query.execute(&mut *tx).await.map_err(db_err)?;
    }
    Ok(())
}

/// The journal's two statements of many rows, for each row count [`statements`]
/// cuts (a power of two up to [`WRITE_CHUNK`]), written once: formatting each
/// row's placeholders on every write (sqlx's `QueryBuilder`) cost about 1,600
/// instructions for every session granted, CPU a saturated node takes from
/// admissions (bench/analysis.md, round twenty-four).
struct RowStatements {
    /// Index `i`: the statement of `2^i` rows.
    texts: Vec<String>,
}

impl RowStatements {
    fn new(head: &str, row: &str, tail: &str) -> Self {
        let texts = (0..=WRITE_CHUNK.ilog2())
            .map(|i| {
                let rows = vec![row; 1 << i].join(", ");
                format!("{head}{rows}{tail}")
            })
            .collect();
        Self { texts }
    }

    /// The statement of `rows` rows, a power of two no greater than [`WRITE_CHUNK`].
    fn for_rows(&self, rows: usize) -> &str {
        debug_assert!(rows.is_power_of_two() && rows <= WRITE_CHUNK);
        &self.texts[rows.ilog2() as usize]
    }
}

static UPSERT: std::sync::LazyLock<RowStatements> = std::sync::LazyLock::new(|| {
    RowStatements::new(
        "INSERT OR REPLACE INTO held_sessions \
         (session_id, publisher_id, customer_id, offer_id, name, state, expires_at, created_at) VALUES ",
        "(?, ?, ?, ?, ?, ?, ?, ?)",
        "",
    )
});

/// A row value IN a subquery: SQLite looks each key up in the primary key (an IN
/// over a VALUES list would scan the table).
static DELETE: std::sync::LazyLock<RowStatements> = std::sync::LazyLock::new(|| {
    RowStatements::new(
        "DELETE FROM held_sessions WHERE (created_at, session_id) IN (SELECT column1, column2 FROM (VALUES ",
        "(?, ?)",
        "))",
    )
});

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row count's statement is valid SQL with a parameter per value: each
    /// upsert writes its rows, and each delete removes them again.
    #[tokio::test]
    async fn the_many_row_statements_write_and_delete_every_row_at_every_size() {
        let mut conn = SqliteConnection::connect("sqlite::memory:").await.unwrap();
        MIGRATOR.run(&mut conn).await.unwrap();
        let mut next = 0_i64;
        for i in 0..=WRITE_CHUNK.ilog2() {
            let rows = 1_usize << i;
            let sql = UPSERT.for_rows(rows);
            assert_eq!(sql.matches('?').count(), rows * 8, "{rows} rows");
            let keys: Vec<i64> = (next..next + rows as i64).collect();
            next += rows as i64;
            let mut query = sqlx::query(sql);
            for key in &keys {
                query = query
                    .bind(key.to_string())
                    .bind("p")
                    .bind("c")
                    .bind("o")
                    .bind("TV")
                    .bind("pending")
                    .bind(key + 1)
                    .bind(*key);
            }
            query.execute(&mut conn).await.unwrap();
            assert_eq!(count(&mut conn).await, rows as i64, "{rows} rows written");

            let mut query = sqlx::query(DELETE.for_rows(rows));
            for key in &keys {
                query = query.bind(*key).bind(key.to_string());
            }
            query.execute(&mut conn).await.unwrap();
            assert_eq!(count(&mut conn).await, 0, "{rows} rows deleted");
        }
    }

    async fn count(conn: &mut SqliteConnection) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM held_sessions")
            .fetch_one(conn)
            .await
            .unwrap()
    }
}
