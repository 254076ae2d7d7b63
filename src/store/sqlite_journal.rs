//! The session journal's own SQLite database, `<settings file>.sessions.db` beside
//! the settings (`drisc.sessions.db`), written by a thread at nice 19.
//!
//! Why a file of its own: SQLite has one write lock per database file. The journal
//! writes every session granted and ended, and its thread yields the core to
//! admissions; in the settings file, a journal transaction held off a busy core
//! kept the lock, and the webhook outbox's writer (at normal priority) waited
//! behind it until its queue overflowed and events were dropped
//! (bench/analysis.md, "Issue 13, round three"). In its own file the journal's
//! lock blocks nobody.
//!
//! Why a log: each write of the journal (a batch of changes, the last word about
//! each session since the last one) is one row of `journal_log`, its changes
//! packed. A row per session, inserted when granted and deleted when ended, cost
//! SQLite two B-tree operations for every session, about 12,700 instructions a
//! create, an eighth of its user-space instructions (bench/analysis.md,
//! round twenty-six). The sessions held are what the rows say, read in order:
//! a put holds a session, a delete ends it, the later word wins, as the table's
//! rows did when written in the same order. When the log holds more than twice
//! the changes it would take to say what it holds (and at least
//! [`COMPACT_FLOOR`]), a compaction rewrites it as the sessions it holds
//! ([`Compaction`]): the log stays a few times the size of the table it replaces.
//!
//! sqlx runs each SQLite connection on a thread it starts when the connection is
//! opened, from the thread that opens it, and Linux copies a thread's nice value to
//! the threads it creates: so the connection is opened from a thread already at
//! nice 19 ([`crate::threads::start_lowered`]). Not `SCHED_IDLE`: the channels
//! between the connection's thread and the runtime have mutexes, and a thread in
//! `SCHED_IDLE` preempted beside a busy one holds them for tens of milliseconds,
//! with the runtime's worker waiting (bench/analysis.md, "The tail, round six").
//! One connection, kept open; it is opened again (the same way) after an error.
//! The packing, and a compaction's reading, run on the journal's flush thread,
//! also at nice 19 (`tasks::journal`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection, Row, SqlitePool};

use super::packing::{Reader, push_text, push_varint};
use super::saved::SavedRow;
use super::sqlite::{OwnConnection, db_err};
use crate::domain::journal::{JournalBatch, Pace};
use crate::domain::ports::{HELD_CHUNK, HeldSink, SettingsError};
use crate::domain::{PoolKey, Session, SessionId, SessionState};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/journal");

/// The name of the journal's SQLite thread (`ps -eLo tid,cls,comm`).
pub(super) const THREAD: &str = "drisc-journal";

/// Changes the log may hold before a compaction is considered: below it, a
/// compaction would rewrite a few megabytes to save as many.
const COMPACT_FLOOR: u64 = 100_000;

/// Sessions per row when many are written at once (a shutdown's save, a
/// compaction, the move of an older version's rows): a row of a few hundred
/// kilobytes, as large as a journal write of one flush's chunk.
const ROW_SESSIONS: usize = 5_000;

/// `read_log`'s `per_row` for a reading that deletes nothing piece by piece (a
/// start, the held sessions listed): a single cut, at the last row.
const NO_CUTS: usize = usize::MAX;

/// How long a compaction works before it rests, as long as it worked: less than
/// packing one chunk of a spread flush (`domain::journal::SPREAD_CHUNK` puts at
/// about 0.32 µs each in round twenty-six's profile), so that a compaction holds
/// the journal's threads no longer at a time than a flush already does. In one transaction a compaction kept both threads working back
/// to back for the whole log (the rows read, the map of what they hold, the
/// rows written), and a thread at nice 19, once picked, keeps the core until it
/// blocks or the tick ends (`threads::Rest` says why).
const COMPACT_RUN: Duration = Duration::from_millis(1);

/// A change's first byte.
const PUT: u8 = 1;
const DELETE: u8 = 2;

/// The journal's file for the settings database at `settings`: `drisc.db` →
/// `drisc.sessions.db` (not `-journal`: SQLite names its own rollback journal so).
pub fn path_for(settings: &Path) -> PathBuf {
    settings.with_extension("sessions.db")
}

pub(super) struct Journal {
    /// Opened from a thread at nice 19 ([`open_lowered`]).
    conn: OwnConnection,
    /// What the log holds, as far as the writes since the last reading of it tell.
    tally: std::sync::Mutex<Tally>,
    /// [`COMPACT_FLOOR`]; smaller in tests.
    floor: u64,
    /// [`ROW_SESSIONS`], for a compaction's rows and statements; smaller in tests.
    per_row: usize,
}

/// The changes in the log, and the sessions they leave held: known exactly when
/// the log was last read whole, moved by each write since (a put of a session
/// already held counts as a new one, so `live` may be high: a compaction then
/// comes later, never wrongly).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    changes: u64,
    live: u64,
}

impl Tally {
    fn wrote(&mut self, puts: usize, deletes: usize) {
        self.changes += (puts + deletes) as u64;
        self.live = (self.live + puts as u64).saturating_sub(deletes as u64);
    }

    fn compaction_due(&self, floor: u64) -> bool {
        self.changes > floor.max(self.live.saturating_mul(2))
    }
}

/// The journal connection's page cache, in KiB, where the settings' connections
/// keep 512. Its writes append to the log's last pages and its readings (a
/// start, a compaction) go through the log once, so a larger cache holds pages
/// nothing reads again: it only filled between two compactions and was handed
/// back at each, RSS stepping by its size (in the 30-minute soak, half a
/// megabyte of a 30 MB server: bench/analysis.md, round thirty-seven).
const CACHE_KIB: u32 = 64;

impl Journal {
    /// Opens (creating if needed) the journal's file with the settings' `options`
    /// (WAL, page cache), applies its migrations, and moves in the rows an older
    /// version kept in a table, once: this file's `held_sessions` (before the log),
    /// and the settings database's (`db`, before this file).
    pub(super) async fn open(settings: &Path, options: SqliteConnectOptions, db: &SqlitePool) -> anyhow::Result<Self> {
        let path = path_for(settings);
        super::private_files::ensure_private_database(&path)?;
        // Statement journals in memory: SQLite keeps one for a statement it may
        // have to undo alone, and past 64 KiB spills it to a temporary file, a
        // `pwrite` per page (bench/analysis.md, "Admission, round nine").
        let options = options
            .filename(&path)
            .thread_name(|_| THREAD.to_owned())
            .pragma("temp_store", "memory")
            .pragma("cache_size", format!("-{CACHE_KIB}"));
        let journal = Self {
            conn: OwnConnection::new(options, |options| Box::pin(open_lowered(options))),
            tally: std::sync::Mutex::default(),
            floor: COMPACT_FLOOR,
            per_row: ROW_SESSIONS,
        };
        journal
            .with(async |conn| MIGRATOR.run(conn).await.map_err(db_err))
            .await?;
        journal.adopt_table().await?;
        journal.adopt(db).await?;
        let changes: i64 = journal
            .with(async |conn| {
                sqlx::query_scalar("SELECT coalesce(sum(count), 0) FROM journal_log")
                    .fetch_one(conn)
                    .await
                    .map_err(db_err)
            })
            .await?;
        // Not read yet: as if every change held a session, until the log is read.
        let changes = u64::try_from(changes).unwrap_or(0);
        *journal.tally() = Tally { changes, live: changes };
        Ok(journal)
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Rows of this file's `held_sessions` (versions before the log) become a
    /// row of the log, in the transaction that deletes them.
    async fn adopt_table(&self) -> Result<(), SettingsError> {
        let moved = self
            .with(async |conn| {
                let mut tx = conn.begin().await.map_err(db_err)?;
                let rows = sqlx::query_as::<_, SavedRow>("SELECT * FROM held_sessions")
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db_err)?;
                if rows.is_empty() {
                    return Ok(0);
                }
                let sessions: Vec<(PoolKey, Session)> = rows.into_iter().filter_map(SavedRow::into_saved).collect();
                append(&mut tx, &pack_sessions(sessions.iter().map(|(pool, s)| (pool, s)))).await?;
                sqlx::query("DELETE FROM held_sessions")
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                tx.commit().await.map_err(db_err)?;
                Ok(sessions.len())
            })
            .await?;
        if moved > 0 {
            tracing::info!(sessions = moved, "session journal rewritten as a log");
        }
        Ok(())
    }

    /// Rows of `held_sessions` in the settings database (versions before this file
    /// kept the journal there) are written here, then deleted there. Stopped half-way,
    /// the next start does it again: a session written twice is held once.
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

    /// Saves `sessions` (a shutdown): each is held, whatever the log said of it.
    pub(super) async fn save(&self, sessions: &[(PoolKey, Session)]) -> Result<(), SettingsError> {
        let rows = pack_sessions(sessions.iter().map(|(pool, s)| (pool, s)));
        self.with(async |conn| {
            let mut tx = conn.begin().await.map_err(db_err)?;
            append(&mut tx, &rows).await?;
            tx.commit().await.map_err(db_err)
        })
        .await?;
        self.tally().wrote(sessions.len(), 0);
        Ok(())
    }

    /// Every saved session, the log emptied in the same transaction (a start).
    pub(super) async fn take(&self) -> Result<Vec<(PoolKey, Session)>, SettingsError> {
        let expected = self.tally().live;
        let held = self
            .with(async |conn| {
                let mut tx = conn.begin().await.map_err(db_err)?;
                let mut held = Vec::new();
                read_held(&mut tx, expected, HeldTo::Gather(&mut held)).await?;
                sqlx::query("DELETE FROM journal_log")
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                tx.commit().await.map_err(db_err)?;
                Ok(held)
            })
            .await?;
        *self.tally() = Tally::default();
        Ok(held)
    }

    /// Every saved session, kept, to `into` a chunk at a time (a start with the
    /// journal on).
    pub(super) async fn held_into(&self, into: HeldSink) -> Result<(), SettingsError> {
        self.read_kept(HeldTo::Send(&into)).await
    }

    /// Every saved session at once, kept.
    #[cfg(test)]
    pub(super) async fn held(&self) -> Result<Vec<(PoolKey, Session)>, SettingsError> {
        let mut held = Vec::new();
        self.read_kept(HeldTo::Gather(&mut held)).await?;
        Ok(held)
    }

    /// Every saved session to `to`, kept; and the log's tally, from the reading.
    async fn read_kept(&self, to: HeldTo<'_>) -> Result<(), SettingsError> {
        let expected = self.tally().live;
        let tally = self.with(async |conn| read_held(conn, expected, to).await).await?;
        *self.tally() = tally;
        Ok(())
    }

    /// Appends `batch` as one row; then, if the log has grown past what it holds,
    /// compacts it. A compaction that fails is logged and tried again once the
    /// log has doubled: the batch itself is written.
    pub(super) async fn write(&self, batch: &JournalBatch) -> Result<(), SettingsError> {
        let mut changes = Vec::with_capacity(batch.put.len() * 64 + batch.delete.len() * 17);
        for (pool, session) in &batch.put {
            pack_put(&mut changes, pool, session);
        }
        for ended in &batch.delete {
            pack_delete(&mut changes, ended.id);
        }
        let row = (changes, batch.len());
        self.with(async |conn| append(conn, std::slice::from_ref(&row)).await)
            .await?;
        let due = {
            let mut tally = self.tally();
            tally.wrote(batch.put.len(), batch.delete.len());
            tally.compaction_due(self.floor)
        };
        if due && let Err(e) = self.compact().await {
            // Not tried again before the log has doubled: a compaction that
            // fails after its appends leaves them in the log, and one tried at
            // every write would add a copy of every held session each time.
            let mut tally = self.tally();
            tally.live = tally.changes;
            tracing::warn!(
                error = %e,
                changes = tally.changes,
                "could not compact the session journal; tried again once the log has doubled"
            );
        }
        Ok(())
    }

    /// Rewrites the log as the sessions it holds ([`Compaction`]), resting
    /// between its pieces as long as each took.
    async fn compact(&self) -> Result<(), SettingsError> {
        let expected = self.tally().live;
        let (per_row, began) = (self.per_row, Instant::now());
        let tally = self
            .with(async |conn| {
                let mut pace = Pace::every(COMPACT_RUN);
                let mut compaction = Compaction::read(conn, expected, per_row, &mut pace).await?;
                for _ in 0..compaction.steps() {
                    compaction.step(conn, &mut pace).await?;
                    pace.rest().await;
                }
                // The compaction read the whole log through this connection's page
                // cache, which then stayed full of pages nothing reads again before
                // the next compaction (writes append to the log's last pages): in
                // the 8,000-player soak, SQLite's memory stepped up at each
                // compaction until the cache reached its `cache_size` (bench/analysis.md,
                // round twenty-nine). Handing it back leaves memory as the compaction
                // found it.
                sqlx::query("PRAGMA shrink_memory")
                    .execute(&mut *conn)
                    .await
                    .map_err(db_err)?;
                let held = compaction.puts.len() as u64;
                Ok(Tally {
                    changes: held,
                    live: held,
                })
            })
            .await?;
        // The compaction's map of the held sessions, and the pages SQLite just
        // handed back, are freed by now; jemalloc would keep them for seconds
        // before returning them (`allocator::hand_back_freed_pages` says how much).
        if let Err(e) = crate::allocator::hand_back_freed_pages() {
            tracing::debug!(error = %e, "the compaction's freed pages stay with the allocator");
        }
        let before = std::mem::replace(&mut *self.tally(), tally);
        tracing::debug!(
            changes_before = before.changes,
            held = tally.live,
            took_ms = began.elapsed().as_millis() as u64,
            "session journal compacted"
        );
        Ok(())
    }
}

/// The held sessions' puts, from two readings of the log: the first learns
/// which put of it is each held session's last, the second gives those puts, a
/// few at a time, in the log's order.
///
/// Why two readings: one that kept every held session's put held the log's
/// whole content in memory at once (at a million sessions, 168 MiB more heap
/// during a compaction: `cargo bench --bench journal`). Here the first reading
/// keeps a session id and a number for each held session (24 bytes), the second
/// only the numbers, in order (8 bytes), and one row.
struct HeldPuts {
    /// Each held session's last put, by its place among the changes read (the
    /// log's first change is 0), ascending: the order the second reading meets
    /// them in.
    last_puts: Vec<u64>,
    /// The last row of the first reading: the second reads no further (past it
    /// are a compaction's own appends).
    through: Option<i64>,
    /// Where the second reading is.
    again: Rereading,
}

/// The second reading, a row at a time.
#[derive(Default)]
struct Rereading {
    /// The last row fetched.
    seq: Option<i64>,
    /// Its changes, and where the next one starts; `None` once all are read.
    row: Option<(Vec<u8>, usize)>,
    /// The place of the next change among all read.
    place: u64,
    /// Puts given so far: the next is `last_puts[given]`.
    given: usize,
}

impl HeldPuts {
    /// The first reading ([`read_log`]'s `per_row` and `pace`).
    async fn read(
        conn: &mut SqliteConnection,
        expected: u64,
        per_row: usize,
        pace: &mut Pace,
    ) -> Result<(Self, Reading), SettingsError> {
        let mut held: HashMap<SessionId, u64, foldhash::fast::RandomState> =
            HashMap::with_capacity_and_hasher(capacity_for(expected), Default::default());
        let mut place = 0u64;
        let reading = read_log(conn, per_row, pace, |change| {
            match change {
                Change::Put(id, _) => {
                    held.insert(id, place);
                }
                Change::Delete(id) => {
                    held.remove(&id);
                }
            }
            place += 1;
        })
        .await?;
        let mut last_puts: Vec<u64> = held.into_values().collect();
        last_puts.sort_unstable();
        let puts = Self {
            last_puts,
            through: reading.last,
            again: Rereading::default(),
        };
        Ok((puts, reading))
    }

    /// The sessions held.
    fn len(&self) -> usize {
        self.last_puts.len()
    }

    /// Whether the second reading has given every held session's put.
    fn all_given(&self) -> bool {
        self.again.given == self.last_puts.len()
    }

    /// Gives `keep` the next `most` held sessions' last puts, each as packed
    /// (fewer at the end, none once all are given), and says how many: the log
    /// read on from where the last call stopped, a row at a time, up to the first
    /// reading's last row.
    async fn next(
        &mut self,
        conn: &mut SqliteConnection,
        most: usize,
        pace: &mut Pace,
        mut keep: impl FnMut(&[u8]),
    ) -> Result<usize, SettingsError> {
        let Some(through) = self.through else {
            return Ok(0);
        };
        let mut count = 0;
        let again = &mut self.again;
        while count < most && again.given + count < self.last_puts.len() {
            let Some((row, at)) = &mut again.row else {
                let next: Option<(i64, Vec<u8>)> = sqlx::query_as(
                    "SELECT seq, changes FROM journal_log WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT 1",
                )
                .bind(again.seq.unwrap_or(i64::MIN))
                .bind(through)
                .fetch_optional(&mut *conn)
                .await
                .map_err(db_err)?;
                let Some((seq, row)) = next else { break };
                again.seq = Some(seq);
                again.row = Some((row, 0));
                pace.rest_if_due().await;
                continue;
            };
            let mut changes = Changes::from(row, *at);
            let mut row_done = true;
            while let Some(Ok(change)) = changes.next() {
                if let Change::Put(_, record) = change
                    && self.last_puts.get(again.given + count) == Some(&again.place)
                {
                    keep(record);
                    count += 1;
                }
                again.place += 1;
                if count == most {
                    row_done = false;
                    break;
                }
            }
            *at = changes.at;
            if row_done {
                again.row = None;
            }
        }
        again.given += count;
        Ok(count)
    }
}

/// Where [`read_held`] gives the sessions it reads.
enum HeldTo<'a> {
    /// All of them into one vector (a start with the journal off: `take`).
    Gather(&'a mut Vec<(PoolKey, Session)>),
    /// A chunk at a time to whoever restores them.
    Send(&'a HeldSink),
}

impl HeldTo<'_> {
    /// Gives `chunk` of `all` sessions held; false once no one takes them.
    async fn give(&mut self, chunk: Vec<(PoolKey, Session)>, all: usize) -> bool {
        match self {
            Self::Gather(held) => {
                held.reserve_exact(all.saturating_sub(held.len()));
                held.extend(chunk);
                true
            }
            Self::Send(into) => into.send(chunk).await.is_ok(),
        }
    }
}

/// Every held session, read in two readings ([`HeldPuts`]), given to `to` in
/// chunks of at most [`HELD_CHUNK`]; and the log's tally. Stops early once no
/// one takes them.
async fn read_held(conn: &mut SqliteConnection, expected: u64, mut to: HeldTo<'_>) -> Result<Tally, SettingsError> {
    let mut pace = Pace::unpaced();
    let (mut puts, reading) = HeldPuts::read(conn, expected, NO_CUTS, &mut pace).await?;
    let all = puts.len();
    let tally = Tally {
        changes: reading.changes,
        live: all as u64,
    };
    loop {
        let mut chunk = Vec::with_capacity(HELD_CHUNK.min(all));
        let keep = |record: &[u8]| match unpack_put(record) {
            Ok(session) => chunk.push(session),
            Err(e) => tracing::warn!(error = %e, "skipping a saved session that cannot be read"),
        };
        if puts.next(conn, HELD_CHUNK, &mut pace, keep).await? == 0 || !to.give(chunk, all).await {
            break;
        }
    }
    Ok(tally)
}

/// A compaction: the held sessions' puts appended ([`HeldPuts`]), then the rows
/// of the first reading deleted; each statement its own transaction, so that
/// none holds the journal's threads long.
///
/// Every held session's put is appended before any row read is deleted, and
/// the rows read are deleted oldest first. So whichever statement a crash (or a
/// shutdown cutting the flush off) stops it after, the log still reads as the
/// sessions held: the rows read that are left, in order, then a put of each
/// session they hold. A session those rows end is ended there after its last
/// put; one they hold is put again, the same, at the end; the rows deleted
/// before it only said what the puts say again. Nothing else writes meanwhile:
/// compactions run within the journal's writes, one at a time.
struct Compaction {
    puts: HeldPuts,
    /// Sessions per row appended.
    per_row: usize,
    /// The rows read, in deletes of about `per_row` changes: each the last seq
    /// one delete reaches, ascending.
    cuts: Vec<i64>,
    /// Statements done.
    done: usize,
}

impl Compaction {
    async fn read(
        conn: &mut SqliteConnection,
        expected: u64,
        per_row: usize,
        pace: &mut Pace,
    ) -> Result<Self, SettingsError> {
        let (puts, reading) = HeldPuts::read(conn, expected, per_row, pace).await?;
        Ok(Self {
            puts,
            per_row,
            cuts: reading.cuts,
            done: 0,
        })
    }

    fn appends(&self) -> usize {
        self.puts.len().div_ceil(self.per_row)
    }

    fn steps(&self) -> usize {
        self.appends() + self.cuts.len()
    }

    /// The next statement: the appends first, then the deletes ([`Compaction`]
    /// says why).
    async fn step(&mut self, conn: &mut SqliteConnection, pace: &mut Pace) -> Result<(), SettingsError> {
        let step = self.done;
        self.done += 1;
        match step.checked_sub(self.appends()) {
            None => {
                let mut packed = Vec::new();
                let count = self
                    .puts
                    .next(conn, self.per_row, pace, |record| packed.extend_from_slice(record))
                    .await?;
                if count > 0 {
                    append(conn, &[(packed, count)]).await?;
                }
                Ok(())
            }
            Some(cut) => {
                // The log's rows are read the same way twice, so this holds; were
                // it not to, a delete would lose the sessions not appended.
                if !self.puts.all_given() {
                    return Err(SettingsError::Database(format!(
                        "the session journal's compaction appended {} of {} held sessions; nothing deleted",
                        self.puts.again.given,
                        self.puts.len()
                    )));
                }
                let through = self.cuts.get(cut).copied().unwrap_or(i64::MIN);
                sqlx::query("DELETE FROM journal_log WHERE seq <= ?")
                    .bind(through)
                    .execute(&mut *conn)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }
        }
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

/// Appends `rows` (packed changes, and how many) to the log, in order.
async fn append(conn: &mut SqliteConnection, rows: &[(Vec<u8>, usize)]) -> Result<(), SettingsError> {
    for (changes, count) in rows {
        sqlx::query("INSERT INTO journal_log (changes, count) VALUES (?, ?)")
            .bind(changes.as_slice())
            .bind(i64::try_from(*count).unwrap_or(i64::MAX))
            .execute(&mut *conn)
            .await
            .map_err(db_err)?;
    }
    Ok(())
}

/// A map's capacity for `expected` sessions, bounded: the tally of a log not yet
/// read counts every change.
fn capacity_for(expected: u64) -> usize {
    usize::try_from(expected.min(1 << 22)).unwrap_or(0)
}

/// What a reading of the whole log saw, besides what its visitor kept.
#[derive(Default)]
struct Reading {
    /// The changes read.
    changes: u64,
    /// The rows read, cut after every `per_row` changes or so: the seq each
    /// piece ends at ([`Compaction`]'s deletes).
    cuts: Vec<i64>,
    /// The last row read.
    last: Option<i64>,
}

/// Reads the log's changes in order into `visit`. A row that cannot be read to
/// its end is used up to the damage, and the damage logged: the sessions of the
/// rows around it still come back.
///
/// `per_row`: the changes between two of [`Reading::cuts`]. `pace`: when to
/// rest, between rows (one holds at most [`ROW_SESSIONS`] changes, about a
/// millisecond of reading).
async fn read_log(
    conn: &mut SqliteConnection,
    per_row: usize,
    pace: &mut Pace,
    mut visit: impl FnMut(Change<'_>),
) -> Result<Reading, SettingsError> {
    let mut reading = Reading::default();
    let mut since_cut = 0;
    let mut rows = sqlx::query("SELECT seq, changes, count FROM journal_log ORDER BY seq").fetch(conn);
    while let Some(row) = rows.try_next().await.map_err(db_err)? {
        let seq: i64 = row.try_get("seq").map_err(db_err)?;
        let changes: &[u8] = row.try_get("changes").map_err(db_err)?;
        for change in Changes::from(changes, 0) {
            match change {
                Ok(change) => {
                    visit(change);
                    reading.changes += 1;
                }
                Err(e) => {
                    tracing::warn!(row = seq, error = %e, "a row of the session journal cannot be read past this");
                }
            }
        }
        // The row's own count, not what could be read of it: the cuts bound the
        // rows a delete frees.
        let count: i64 = row.try_get("count").map_err(db_err)?;
        since_cut += usize::try_from(count).unwrap_or(0).max(1);
        if since_cut >= per_row {
            reading.cuts.push(seq);
            since_cut = 0;
        }
        reading.last = Some(seq);
        drop(row);
        pace.rest_if_due().await;
    }
    // The last delete reaches the last row read.
    if since_cut > 0
        && let Some(last) = reading.last
    {
        reading.cuts.push(last);
    }
    Ok(reading)
}

/// A change of the log, as read: a put with its whole packed record, or a delete.
enum Change<'a> {
    Put(SessionId, &'a [u8]),
    Delete(SessionId),
}

/// A row's changes in order, from a byte where one starts; at damage an error,
/// then nothing more (the rest of the row cannot be told apart).
struct Changes<'a> {
    row: &'a [u8],
    /// Where the next change starts.
    at: usize,
    damaged: bool,
}

impl<'a> Changes<'a> {
    fn from(row: &'a [u8], at: usize) -> Self {
        Self {
            row,
            at,
            damaged: false,
        }
    }
}

impl<'a> Iterator for Changes<'a> {
    type Item = Result<Change<'a>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self
            .row
            .get(self.at..)
            .filter(|rest| !rest.is_empty() && !self.damaged)?;
        let mut r = Reader::new(rest);
        let change = (|| {
            let kind = r.byte()?;
            let id = r.session_id()?;
            match kind {
                PUT => {
                    skip_put_fields(&mut r)?;
                    Ok(Change::Put(id, &rest[..rest.len() - r.remaining()]))
                }
                DELETE => Ok(Change::Delete(id)),
                other => Err(format!("an unknown change {other}")),
            }
        })();
        match change {
            Ok(_) => self.at += rest.len() - r.remaining(),
            Err(_) => self.damaged = true,
        }
        Some(change)
    }
}

/// The rows of `sessions`' puts, at most [`ROW_SESSIONS`] each.
fn pack_sessions<'a>(sessions: impl Iterator<Item = (&'a PoolKey, &'a Session)>) -> Vec<(Vec<u8>, usize)> {
    let sessions: Vec<_> = sessions.collect();
    sessions
        .chunks(ROW_SESSIONS)
        .map(|chunk| {
            let mut changes = Vec::with_capacity(chunk.len() * 64);
            for (pool, session) in chunk {
                pack_put(&mut changes, pool, session);
            }
            (changes, chunk.len())
        })
        .collect()
}

/// A put: [`PUT`], the session id's 16 bytes, `created_at` and `expires_at` as
/// varints, then the state, the publisher, customer and offer ids and the
/// session's name as texts (a varint of the length in bytes, then the UTF-8).
/// The holder is not kept: a session brought back comes back detached.
fn pack_put(out: &mut Vec<u8>, pool: &PoolKey, session: &Session) {
    out.push(PUT);
    out.extend_from_slice(session.id.0.as_bytes());
    push_varint(out, session.created_at);
    push_varint(out, session.expires_at);
    push_text(out, session.state.as_str());
    push_text(out, pool.publisher_id());
    push_text(out, pool.customer_id());
    push_text(out, pool.offer_id());
    push_text(out, &session.name);
}

/// A delete: [`DELETE`], the session id's 16 bytes.
fn pack_delete(out: &mut Vec<u8>, id: SessionId) {
    out.push(DELETE);
    out.extend_from_slice(id.0.as_bytes());
}

/// Past a put's fields, after its kind and id (the record is kept as packed).
fn skip_put_fields(r: &mut Reader<'_>) -> Result<(), String> {
    r.varint()?;
    r.varint()?;
    for _ in 0..5 {
        r.skip_text()?;
    }
    Ok(())
}

fn unpack_put(record: &[u8]) -> Result<(PoolKey, Session), String> {
    let mut r = Reader::new(record);
    if r.byte()? != PUT {
        return Err("not a put".into());
    }
    let id = r.session_id()?;
    let created_at = r.varint()?;
    let expires_at = r.varint()?;
    let state = r.text()?;
    let state = SessionState::parse(state).ok_or_else(|| format!("an unknown state {state:?}"))?;
    let pool = PoolKey::from_ids(r.text()?, r.text()?, r.text()?);
    let session = Session {
        id,
        name: r.text()?.to_owned(),
        state,
        expires_at,
        holder: None,
        created_at,
    };
    Ok((pool, session))
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;
    use std::sync::Arc;

    use sqlx::sqlite::SqliteJournalMode;

    use super::*;
    use crate::domain::journal::Ended;
    use crate::store::sqlite::SqliteSettings;

    async fn opened(dir: &Path) -> (SqliteSettings, Journal) {
        let path = dir.join("drisc.db");
        let settings = SqliteSettings::open(&path).await.unwrap();
        let options = SqliteConnectOptions::from_str("sqlite:")
            .unwrap()
            .journal_mode(SqliteJournalMode::Wal);
        let journal = Journal::open(&path, options, settings.pool()).await.unwrap();
        (settings, journal)
    }

    #[tokio::test]
    async fn the_journal_keeps_a_small_page_cache_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let (_settings, journal) = opened(dir.path()).await;
        let cache: i64 = journal
            .with(async |conn| {
                sqlx::query_scalar("PRAGMA cache_size")
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(db_err)
            })
            .await
            .unwrap();
        assert_eq!(cache, -i64::from(CACHE_KIB), "a size in KiB is negative");
    }

    fn session(n: u64, name: &str) -> (Arc<PoolKey>, Session) {
        let pool = PoolKey::from_ids("acme", &format!("customer-{n}"), "premium");
        let session = Session {
            id: SessionId::random(),
            name: name.into(),
            state: SessionState::Live,
            expires_at: 2_000_000 + n,
            holder: None,
            created_at: 1_000_000 + n,
        };
        (Arc::new(pool), session)
    }

    fn batch(put: &[(Arc<PoolKey>, Session)], delete: &[&Session]) -> JournalBatch {
        JournalBatch {
            put: put.to_vec(),
            delete: delete
                .iter()
                .map(|s| Ended {
                    id: s.id,
                    created_at: s.created_at,
                })
                .collect(),
        }
    }

    fn sorted(held: Vec<(PoolKey, Session)>) -> Vec<(PoolKey, Session)> {
        let mut held = held;
        held.sort_by_key(|(_, s)| s.id.to_string());
        held
    }

    fn expected(sessions: &[&(Arc<PoolKey>, Session)]) -> Vec<(PoolKey, Session)> {
        sorted(sessions.iter().map(|(pool, s)| ((**pool).clone(), s.clone())).collect())
    }

    async fn log_rows(journal: &Journal) -> (i64, i64) {
        journal
            .with(async |conn| {
                let row = sqlx::query("SELECT count(*) AS n, coalesce(sum(count), 0) AS changes FROM journal_log")
                    .fetch_one(conn)
                    .await
                    .map_err(db_err)?;
                Ok((row.get("n"), row.get("changes")))
            })
            .await
            .unwrap()
    }

    /// Every field comes back; a later put of a session replaces the earlier, a
    /// delete ends it; `take` empties the log.
    #[tokio::test]
    async fn the_log_holds_what_its_puts_and_deletes_say_read_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (settings, journal) = opened(dir.path()).await;
        let a = session(1, "living room tv");
        let b = session(2, "télé du salon 📺");
        let c = session(3, "");
        journal
            .write(&batch(&[a.clone(), b.clone(), c.clone()], &[]))
            .await
            .unwrap();
        let mut b2 = b.clone();
        b2.1.name = "renamed".into();
        b2.1.state = SessionState::Detached;
        journal.write(&batch(&[b2.clone()], &[&a.1])).await.unwrap();

        assert_eq!(sorted(journal.held().await.unwrap()), expected(&[&b2, &c]));
        assert_eq!(*journal.tally(), Tally { changes: 5, live: 2 });
        assert_eq!(log_rows(&journal).await, (2, 5), "one row a write");

        assert_eq!(sorted(journal.take().await.unwrap()), expected(&[&b2, &c]));
        assert!(journal.held().await.unwrap().is_empty(), "taken");
        assert_eq!(log_rows(&journal).await, (0, 0));
        journal.close().await;
        settings.close().await;
    }

    /// Past the floor and twice what it holds, the log is rewritten as the
    /// sessions it holds: no session gained or lost, and the log shorter than
    /// what was written.
    #[tokio::test]
    async fn a_compaction_keeps_exactly_the_sessions_held_and_shrinks_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (settings, mut journal) = opened(dir.path()).await;
        journal.floor = 10;
        // Several rows appended and several deletes in each compaction.
        journal.per_row = 4;
        let mut held: Vec<(Arc<PoolKey>, Session)> = Vec::new();
        let mut written = 0;
        for n in 0..40 {
            // Two sessions granted, the oldest held one ended.
            let fresh = [session(2 * n, "a"), session(2 * n + 1, "b")];
            let ended = (!held.is_empty()).then(|| held.remove(0));
            let deletes: Vec<&Session> = ended.iter().map(|(_, s)| s).collect();
            journal.write(&batch(&fresh, &deletes)).await.unwrap();
            written += 2 + deletes.len() as i64;
            held.extend(fresh);
            // After every write, compacted or not: a session a compaction lost
            // would otherwise go unseen once the oldest are ended.
            let want: Vec<&(Arc<PoolKey>, Session)> = held.iter().collect();
            assert_eq!(
                sorted(journal.held().await.unwrap()),
                expected(&want),
                "after write {n}"
            );
        }
        let (rows, changes) = log_rows(&journal).await;
        assert!(
            changes < written,
            "compacted: {changes} changes in the log of {written} written"
        );
        assert!(
            changes as usize <= 2 * held.len() + 3,
            "{changes} changes in {rows} rows for {} sessions",
            held.len()
        );
        let want: Vec<&(Arc<PoolKey>, Session)> = held.iter().collect();
        assert_eq!(sorted(journal.held().await.unwrap()), expected(&want));

        // Opened again, it reads the same.
        journal.close().await;
        let (settings2, again) = opened(dir.path()).await;
        assert_eq!(sorted(again.held().await.unwrap()), expected(&want));
        again.close().await;
        settings2.close().await;
        settings.close().await;
    }

    /// A compaction is a statement at a time: whichever one it stops after (a
    /// crash, a shutdown), the log reads as the sessions it held, and a write
    /// after it is read last. Fails if a delete came before the last append, or
    /// deleted newest first.
    #[tokio::test]
    async fn a_compaction_stopped_after_any_statement_leaves_the_log_holding_the_same() {
        let mut stop = 0;
        loop {
            let dir = tempfile::tempdir().unwrap();
            let (settings, mut journal) = opened(dir.path()).await;
            journal.floor = u64::MAX;
            let mut held: Vec<(Arc<PoolKey>, Session)> = Vec::new();
            for n in 0..12 {
                let fresh = [session(2 * n, "a"), session(2 * n + 1, "b")];
                // Every third write ends the two oldest: rows the compaction
                // deletes hold puts of sessions ended in later rows.
                let ended: Vec<_> = if n % 3 == 2 {
                    held.drain(..2).collect()
                } else {
                    Vec::new()
                };
                let deletes: Vec<&Session> = ended.iter().map(|(_, s)| s).collect();
                journal.write(&batch(&fresh, &deletes)).await.unwrap();
                held.extend(fresh);
            }
            let steps = journal
                .with(async |conn| {
                    let mut pace = Pace::unpaced();
                    let mut compaction = Compaction::read(conn, 0, 3, &mut pace).await?;
                    for _ in 0..stop.min(compaction.steps()) {
                        compaction.step(conn, &mut pace).await?;
                    }
                    Ok(compaction.steps())
                })
                .await
                .unwrap();
            assert!(steps >= 8, "{steps} statements: several appends and deletes");
            let want: Vec<&(Arc<PoolKey>, Session)> = held.iter().collect();
            assert_eq!(
                sorted(journal.held().await.unwrap()),
                expected(&want),
                "stopped after {stop} of {steps} statements"
            );
            let later = session(100, "later");
            journal
                .write(&batch(std::slice::from_ref(&later), &[&held[0].1]))
                .await
                .unwrap();
            let mut want: Vec<&(Arc<PoolKey>, Session)> = held[1..].iter().collect();
            want.push(&later);
            assert_eq!(
                sorted(journal.held().await.unwrap()),
                expected(&want),
                "a write after {stop} of {steps} statements"
            );
            if stop == steps {
                let (_, changes) = log_rows(&journal).await;
                assert_eq!(
                    changes as usize,
                    held.len() + 2,
                    "only the puts and the later write are left"
                );
            }
            journal.close().await;
            settings.close().await;
            if stop == steps {
                break;
            }
            stop += 1;
        }
    }

    /// A row cut short gives the changes before the damage, and the rows around
    /// it are read as usual.
    #[tokio::test]
    async fn a_damaged_row_loses_only_what_follows_the_damage_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let (settings, journal) = opened(dir.path()).await;
        let (a, b, c) = (session(1, "a"), session(2, "b"), session(3, "c"));
        journal.write(&batch(std::slice::from_ref(&a), &[])).await.unwrap();
        let mut damaged = Vec::new();
        pack_put(&mut damaged, &b.0, &b.1);
        let whole = damaged.len();
        pack_put(&mut damaged, &c.0, &c.1);
        damaged.truncate(whole + 20);
        journal
            .with(async |conn| append(conn, &[(damaged, 2)]).await)
            .await
            .unwrap();
        let d = session(4, "d");
        journal.write(&batch(std::slice::from_ref(&d), &[])).await.unwrap();
        assert_eq!(sorted(journal.held().await.unwrap()), expected(&[&a, &b, &d]));
        journal.close().await;
        settings.close().await;
    }

    /// A compaction that fails after its appends (here each delete refused) is
    /// not tried again at the next writes, which would each append every held
    /// session once more, but once the log has doubled; the sessions held are
    /// the same throughout, and once deletes work again a compaction shrinks the
    /// log. Fails if a failed compaction were retried at every write.
    #[tokio::test]
    async fn a_failed_compaction_waits_for_the_log_to_double_before_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let (settings, mut journal) = opened(dir.path()).await;
        journal.floor = 10;
        let refuse_deletes = |on: bool| {
            let sql = if on {
                "CREATE TRIGGER refuse BEFORE DELETE ON journal_log BEGIN SELECT RAISE(ABORT, 'refused'); END"
            } else {
                "DROP TRIGGER refuse"
            };
            let journal = &journal;
            async move {
                journal
                    .with(async |conn| sqlx::query(sql).execute(conn).await.map(|_| ()).map_err(db_err))
                    .await
                    .unwrap();
            }
        };
        // Twenty sessions held, then one granted and the oldest ended a write.
        let mut held: Vec<(Arc<PoolKey>, Session)> = (0..20).map(|n| session(n, "a")).collect();
        journal.write(&batch(&held, &[])).await.unwrap();
        refuse_deletes(true).await;
        let mut next = 20;
        let mut churn = async |journal: &Journal, held: &mut Vec<(Arc<PoolKey>, Session)>| {
            let fresh = session(next, "b");
            next += 1;
            let ended = held.remove(0);
            journal
                .write(&batch(std::slice::from_ref(&fresh), &[&ended.1]))
                .await
                .unwrap();
            held.push(fresh);
        };
        // The log passes twice what it holds (40 changes) at the 11th write: the
        // compaction appends 20 puts, then its first delete is refused.
        for _ in 0..11 {
            churn(&journal, &mut held).await;
        }
        let (_, after_failure) = log_rows(&journal).await;
        assert_eq!(
            after_failure,
            20 + 2 * 11 + 20,
            "the failed compaction's appends are left"
        );
        for _ in 0..10 {
            churn(&journal, &mut held).await;
        }
        let (_, later) = log_rows(&journal).await;
        assert_eq!(later, after_failure + 2 * 10, "no compaction tried at the writes since");
        let want: Vec<&(Arc<PoolKey>, Session)> = held.iter().collect();
        assert_eq!(sorted(journal.held().await.unwrap()), expected(&want));

        refuse_deletes(false).await;
        for _ in 0..40 {
            churn(&journal, &mut held).await;
        }
        let (_, compacted) = log_rows(&journal).await;
        assert!(
            compacted <= 2 * 20 + 2,
            "compacted once deletes work: {compacted} changes"
        );
        let want: Vec<&(Arc<PoolKey>, Session)> = held.iter().collect();
        assert_eq!(sorted(journal.held().await.unwrap()), expected(&want));
        journal.close().await;
        settings.close().await;
    }

    /// A compaction reads the log twice, and both readings stop at a row's
    /// damage alike: the sessions before it and in the rows around it are
    /// appended, none is lost and none comes back ended. Fails if the second
    /// reading counted the changes differently from the first (a held session's
    /// last put then not found, and the compaction stopped before its deletes).
    #[tokio::test]
    async fn a_compaction_past_a_damaged_row_keeps_what_a_reading_finds() {
        let dir = tempfile::tempdir().unwrap();
        let (settings, mut journal) = opened(dir.path()).await;
        journal.per_row = 2;
        let (a, b, c, d, e) = (
            session(1, "a"),
            session(2, "b"),
            session(3, "c"),
            session(4, "d"),
            session(5, "e"),
        );
        journal.write(&batch(&[a.clone(), e.clone()], &[])).await.unwrap();
        // b whole, then c's put and a delete of e cut short by the damage.
        let mut damaged = Vec::new();
        pack_put(&mut damaged, &b.0, &b.1);
        let whole = damaged.len();
        pack_put(&mut damaged, &c.0, &c.1);
        pack_delete(&mut damaged, e.1.id);
        damaged.truncate(whole + 20);
        journal
            .with(async |conn| append(conn, &[(damaged, 3)]).await)
            .await
            .unwrap();
        let mut b2 = b.clone();
        b2.1.name = "b again".into();
        journal.write(&batch(&[d.clone(), b2.clone()], &[&a.1])).await.unwrap();
        let want = expected(&[&b2, &d, &e]);
        assert_eq!(sorted(journal.held().await.unwrap()), want);

        journal.compact().await.unwrap();
        assert_eq!(sorted(journal.held().await.unwrap()), want, "after the compaction");
        assert_eq!(
            log_rows(&journal).await,
            (2, 3),
            "only the held sessions' puts are left"
        );
        journal.close().await;
        settings.close().await;
    }

    /// The journal's file of the version before the log kept a row per session in
    /// `held_sessions`: the first start of this one moves them into the log, once.
    #[tokio::test]
    async fn the_rows_of_the_table_before_the_log_are_moved_into_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let (settings, journal) = opened(dir.path()).await;
        journal.close().await;
        let file = SqliteConnectOptions::new().filename(path_for(&dir.path().join("drisc.db")));
        let old = SqlitePool::connect_with(file).await.unwrap();
        let id = crate::store::saved::write_old_row(&old, "pending", 5, 9).await;

        let journal = Journal::open(
            &dir.path().join("drisc.db"),
            SqliteConnectOptions::from_str("sqlite:")
                .unwrap()
                .journal_mode(SqliteJournalMode::Wal),
            settings.pool(),
        )
        .await
        .unwrap();
        let held = journal.held().await.unwrap();
        assert_eq!(held.len(), 1);
        let (pool, s) = &held[0];
        assert_eq!(s.id.to_string(), id);
        assert_eq!(
            (
                pool.publisher_id(),
                pool.customer_id(),
                pool.offer_id(),
                s.name.as_str()
            ),
            ("p", "c", "o", "TV")
        );
        assert_eq!((s.state, s.created_at, s.expires_at), (SessionState::Pending, 5, 9));
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM held_sessions")
            .fetch_one(&old)
            .await
            .unwrap();
        assert_eq!(left, 0, "the table is emptied in the move");
        journal.close().await;
        old.close().await;
        settings.close().await;
    }
}
