//! The session journal: which sessions exist, written to the settings database in
//! batches so that a crash (`kill -9`, OOM, power loss) loses at most the changes of
//! the last interval, never the sessions held.
//!
//! The session store records each change here while it holds the pool's lock; a
//! background task takes what accumulated and writes it (in one transaction, or in
//! several spread over time when there is a lot). Nothing
//! on the admission path waits for the database. Changes are coalesced per session
//! id: only the last word about a session between two flushes is written, and a
//! session created and ended within one interval is never written at all. The
//! buffer therefore holds at most one entry per session that changed since the last
//! flush (or since the last successful one, while the database is unreachable).
//!
//! Heartbeats and state changes are not journaled: a session brought back after a
//! crash always comes back detached, with a fresh reconnect grace.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::clock::Millis;
use super::ports::{Pause, SessionArchive, SettingsError};
use super::session::{PoolKey, Session, SessionId};

/// A session that exists since the last flush: write (insert or replace) its row.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Put {
    pool: Arc<PoolKey>,
    session: Session,
    /// Its row may already be in the database (restored, or written by a flush
    /// whose outcome is unknown), so ending it must delete the row. A session
    /// granted since the last flush has no row yet: ending it writes nothing.
    stored: bool,
}

/// A session whose row to delete, by the row's key: the database keeps the rows in
/// order of `created_at` (sessions mostly end in the order they began), so a
/// delete lands on the few pages that hold the oldest rows rather than on any page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub id: SessionId,
    pub created_at: Millis,
}

/// One transaction's worth of journal changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalBatch {
    /// Sessions to insert or replace.
    pub put: Vec<(Arc<PoolKey>, Session)>,
    /// Sessions whose rows to delete.
    pub delete: Vec<Ended>,
}

impl JournalBatch {
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.delete.is_empty()
    }

    pub fn len(&self) -> usize {
        self.put.len() + self.delete.len()
    }

    /// Empty, with room for `puts` and `deletes`: a list grown by doubling would
    /// hold its last two sizes at once (at a shutdown, a put of every session held).
    fn with_room(puts: usize, deletes: usize) -> Self {
        Self {
            put: Vec::with_capacity(puts),
            delete: Vec::with_capacity(deletes),
        }
    }

    fn push_put(&mut self, put: Put) {
        self.put.push((put.pool, put.session));
    }

    fn push_delete(&mut self, id: SessionId, created_at: Millis) {
        self.delete.push(Ended { id, created_at });
    }

    /// Takes out at most `n` changes, puts first, from the end of each list: the
    /// changes left stay where they are. Taken from the front, every chunk moved
    /// all the changes behind it, quadratic in a flush's size: at 50,000 sessions
    /// granted a second, the flush thread's share of the server's CPU samples fell
    /// from 4.2% to 3.5% with this (bench/analysis.md, round twenty-four). Which
    /// changes go first does not matter: each is the last word about its own session.
    fn split_off(&mut self, n: usize) -> JournalBatch {
        let puts = self.put.len().min(n);
        let deletes = self.delete.len().min(n - puts);
        JournalBatch {
            put: take_last(&mut self.put, puts),
            delete: take_last(&mut self.delete, deletes),
        }
    }
}

fn lock(part: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    // A panic while recording cannot leave the map half-changed in a way that
    // matters (each change is one insert or remove), so keep going.
    part.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Every change `part` recorded so far, leaving it empty, with room for as many
/// puts and deletes as it held, `room` at most of each.
fn swap(part: &Mutex<Pending>, room: usize) -> Pending {
    let mut pending = lock(part);
    let fresh = Pending {
        puts: HashMap::with_capacity_and_hasher(pending.puts.len().min(room), Default::default()),
        deletes: HashMap::with_capacity_and_hasher(pending.deletes.len().min(room), Default::default()),
    };
    std::mem::replace(&mut *pending, fresh)
}

/// The last `n` items of `list`, moved out; the whole list itself when `n` is its
/// length (`Vec::split_off(0)` would allocate a new list as large as the old).
fn take_last<T>(list: &mut Vec<T>, n: usize) -> Vec<T> {
    if n == list.len() {
        std::mem::take(list)
    } else {
        list.split_off(list.len() - n)
    }
}

/// Changes per transaction when a flush is spread ([`Journal::flush_spread`]):
/// a few milliseconds of the journal's time each (1.3 to 1.6 µs a change
/// flushing, packing and SQLite together, with 200,000 to 1,000,000 sessions
/// held: `benches/journal.rs`, `bench/analysis.md` round twenty-seven).
pub const SPREAD_CHUNK: usize = 5_000;

/// Changes taken out of the journal between two pauses of a spread flush: a
/// few tenths of a millisecond of moving entries.
pub const TAKE_BITE: usize = 2_048;

/// The changes one part of the journal records: a session's id is in one of the
/// two maps at most, its last word.
///
/// Why two maps: an entry of one map is as large as its largest value, so in one
/// map with the puts a delete (an id and a time, 24 bytes) took a put's room, over
/// a hundred bytes. When a million restored sessions end at once (nobody came back
/// within the grace) the deletes wait for the next flushes all together: the
/// server's peak RSS through that reaping was 128 MiB over what it held before it
/// with one map, 48 MiB with two (580 against 503 MiB at a million sessions:
/// `bench/restart --expiry-rate`, bench/analysis.md round thirty-six).
#[derive(Default)]
struct Pending {
    puts: HashMap<SessionId, Put, foldhash::fast::RandomState>,
    /// Each ended session's `created_at`: its row's key.
    deletes: HashMap<SessionId, Millis, foldhash::fast::RandomState>,
}

impl Pending {
    fn len(&self) -> usize {
        self.puts.len() + self.deletes.len()
    }

    fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty()
    }
}

/// How many maps the changes not yet written are split in, by session id.
///
/// Why: a map grows by moving every entry into one twice as large, under the lock
/// every admission takes to record its session. A million sessions ending within
/// seconds (a restart whose players did not come back, their grace ending at once)
/// grew one map to a million entries, recorded by the sweep, a thread at nice 19
/// that the core's other threads can keep waiting while it holds the lock: with
/// one map, admissions waited up to 77 ms while those sessions were reaped; split
/// in 64 (each growth moving a sixty-fourth as much, and an admission waiting
/// only when its own part is taken), 6 ms at most (`bench/restart --expiry-rate`,
/// `bench/analysis.md` round thirty-five).
const PARTS: usize = 64;

/// The changes not yet written. Cheap to record into (one short lock, no I/O).
pub struct Journal {
    /// By session id ([`part_of`]): a session's changes always go to one part, so
    /// its last word is in one place.
    pending: [Mutex<Pending>; PARTS],
    /// Held for a whole flush, so two flushes never race: a later batch (a delete)
    /// must never commit before an earlier one (the put of the same session).
    writing: tokio::sync::Mutex<()>,
}

impl Default for Journal {
    fn default() -> Self {
        Self {
            pending: std::array::from_fn(|_| Mutex::default()),
            writing: tokio::sync::Mutex::default(),
        }
    }
}

/// The part of the pending changes that records `id`'s: its first byte, random in
/// every id drisc makes (a version 4 UUID's; the cluster's shard bits are in its
/// last bytes).
fn part_of(id: SessionId) -> usize {
    usize::from(id.0.as_bytes()[0]) % PARTS
}

impl Journal {
    pub fn new() -> Self {
        Self::default()
    }

    /// The part that records `id`'s changes, locked.
    fn pending(&self, id: SessionId) -> MutexGuard<'_, Pending> {
        lock(&self.pending[part_of(id)])
    }

    /// A session was granted: it has no row yet. (A start's restored sessions are
    /// not recorded: they come from the journal's own rows, which stay.)
    pub fn added(&self, pool: &Arc<PoolKey>, session: &Session) {
        let mut pending = self.pending(session.id);
        // A delete waiting for this id means a row exists that the put replaces.
        let stored = pending.deletes.remove(&session.id).is_some();
        let put = Put {
            pool: Arc::clone(pool),
            session: session.clone(),
            stored,
        };
        pending.puts.insert(session.id, put);
    }

    /// A session ended (finished, taken over, kicked, reaped or found dead).
    pub fn removed(&self, session: &Session) {
        let mut pending = self.pending(session.id);
        match pending.puts.remove(&session.id) {
            // Granted and ended within one interval: the database never hears of it.
            Some(Put { stored: false, .. }) => {}
            _ => {
                pending.deletes.insert(session.id, session.created_at);
            }
        }
    }

    /// How many changes wait to be written.
    pub fn len(&self) -> usize {
        self.pending.iter().map(|part| lock(part).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.iter().all(|part| lock(part).is_empty())
    }

    /// Takes every change recorded so far, leaving the journal empty and without
    /// room: a last flush's (a shutdown's), after which little is recorded. Sized
    /// for as many changes again, as a spread flush leaves it, the empty map was
    /// most of a shutdown's memory: with a million sessions held, leaving it
    /// without room and sizing the batch once took the last flush's peak from 400
    /// to 96 MiB (`benches/journal.rs`, bench/analysis.md round thirty-four).
    fn take(&self) -> JournalBatch {
        let parts: Vec<_> = self.pending.iter().map(|part| swap(part, 0)).collect();
        let mut batch = JournalBatch::with_room(
            parts.iter().map(|p| p.puts.len()).sum(),
            parts.iter().map(|p| p.deletes.len()).sum(),
        );
        for part in parts {
            part.puts.into_values().for_each(|put| batch.push_put(put));
            for (id, created_at) in part.deletes {
                batch.push_delete(id, created_at);
            }
        }
        batch
    }

    /// [`Self::take`], pausing every [`TAKE_BITE`] changes: at a million customers a
    /// second's changes are tens of thousands of entries, milliseconds of CPU in one
    /// piece otherwise.
    async fn take_in_bites(&self, pause: &impl Pause) -> JournalBatch {
        // Sized for as many changes again, so the next interval's recording does
        // not grow the maps step by step under the lock admissions take. The batch
        // grows as the take goes (sized at once for every change, puts and
        // deletes alike, it was a few megabytes more a flush at saturation).
        let mut batch = JournalBatch::default();
        let mut taken = 0;
        for part in &self.pending {
            let Pending { puts, deletes } = swap(part, usize::MAX);
            for put in puts.into_values() {
                batch.push_put(put);
                taken += 1;
                if taken % TAKE_BITE == 0 {
                    pause.pause().await;
                }
            }
            for (id, created_at) in deletes {
                batch.push_delete(id, created_at);
                taken += 1;
                if taken % TAKE_BITE == 0 {
                    pause.pause().await;
                }
            }
        }
        batch
    }

    /// Puts back a batch that could not be written. Whatever was recorded since is
    /// newer and wins; the rows of the batch may or may not exist now (a commit
    /// that timed out may still have happened), so they count as stored.
    fn put_back(&self, batch: JournalBatch) {
        for (pool, session) in batch.put {
            let id = session.id;
            let mut pending = self.pending(id);
            if !pending.deletes.contains_key(&id) {
                pending.puts.entry(id).or_insert(Put {
                    pool,
                    session,
                    stored: true,
                });
            }
        }
        for Ended { id, created_at } in batch.delete {
            let mut pending = self.pending(id);
            if !pending.puts.contains_key(&id) {
                pending.deletes.entry(id).or_insert(created_at);
            }
        }
    }

    /// Writes the changes recorded so far, in transactions of at most
    /// [`SPREAD_CHUNK`] changes back to back (a shutdown's last flush). On failure
    /// the changes not written are kept for the next flush; the number written
    /// otherwise.
    ///
    /// Why chunks here too: a shutdown detaches every session at once, so with a
    /// million held this flush is a million puts. In one transaction they were one
    /// value of some 80 MB, packed and then copied for SQLite's thread, and one
    /// row that the next start had to read whole; chunks bound all three to a few
    /// hundred kilobytes. A stop cut off between two loses only what is unwritten,
    /// as a crash does between two of a spread flush's.
    pub async fn flush(&self, archive: &dyn SessionArchive) -> Result<usize, SettingsError> {
        let _writing = self.writing.lock().await;
        let batch = self.take();
        self.write_chunks(archive, batch, Pace::unpaced()).await
    }

    /// Writes the changes recorded so far in transactions of at most
    /// [`SPREAD_CHUNK`] changes, resting after each as long as it took, for at
    /// most `within` in all (past it, the rest goes back to back).
    ///
    /// Why: with a million customers, a second's changes are tens of thousands
    /// of rows, and the database's thread writing them in one go takes a hundred
    /// milliseconds of CPU. Where the server has one core, that is a hundred
    /// milliseconds in which admissions get half of it. Chunks with rests leave
    /// the core to requests at least half the time. Each change is the last word
    /// about its session and no two are about the same one, so chunks may commit
    /// separately in any order; a crash between two loses only what is unwritten.
    ///
    /// Taking the changes out pauses every [`TAKE_BITE`] of them (`pause`, the
    /// caller's way of leaving the core, as the sweep's bites do).
    pub async fn flush_spread(
        &self,
        archive: &dyn SessionArchive,
        within: Duration,
        pause: &impl Pause,
    ) -> Result<usize, SettingsError> {
        let _writing = self.writing.lock().await;
        let started = Instant::now();
        let batch = self.take_in_bites(pause).await;
        let pace = Pace::every(Duration::ZERO).until(started + within);
        self.write_chunks(archive, batch, pace).await
    }

    /// Writes `rest` in transactions of at most [`SPREAD_CHUNK`] changes, resting
    /// between two as `pace` says; at a failure, what is not written is kept for
    /// the next flush.
    async fn write_chunks(
        &self,
        archive: &dyn SessionArchive,
        mut rest: JournalBatch,
        mut pace: Pace,
    ) -> Result<usize, SettingsError> {
        let mut written = 0;
        while !rest.is_empty() {
            let chunk = rest.split_off(SPREAD_CHUNK);
            written += self.write_or_keep(archive, chunk).await.inspect_err(|_| {
                self.put_back(std::mem::take(&mut rest));
            })?;
            if !rest.is_empty() {
                pace.rest().await;
            }
        }
        Ok(written)
    }

    /// Writes `batch` in one transaction, or keeps it for the next flush.
    async fn write_or_keep(&self, archive: &dyn SessionArchive, batch: JournalBatch) -> Result<usize, SettingsError> {
        if batch.is_empty() {
            return Ok(0);
        }
        match archive.write(&batch).await {
            Ok(()) => Ok(batch.len()),
            Err(e) => {
                self.put_back(batch);
                Err(e)
            }
        }
    }
}

/// Work in runs, each followed by a rest as long as it took, so that work at
/// nice 19 leaves the core to requests at least half the time (a spread flush,
/// a compaction of the journal's log); or, for work that must finish first (a
/// start's reading), no rests. The sleep is async, not `threads::Rest`'s
/// blocking one: such work may run on the server's runtime too (the last flush
/// at shutdown).
pub struct Pace {
    /// How long a run lasts before [`Pace::rest_if_due`] rests; `None`: never rests.
    run: Option<Duration>,
    /// When the current run began.
    since: Instant,
    /// No rest that would end past this (the rest of the work then goes back to back).
    until: Option<Instant>,
}

impl Pace {
    pub fn every(run: Duration) -> Self {
        Self {
            run: Some(run),
            since: Instant::now(),
            until: None,
        }
    }

    pub fn unpaced() -> Self {
        Self {
            run: None,
            since: Instant::now(),
            until: None,
        }
    }

    /// Rests no more once a rest would end past `deadline`.
    pub fn until(self, deadline: Instant) -> Self {
        Self {
            until: Some(deadline),
            ..self
        }
    }

    /// Rests if the run is over.
    pub async fn rest_if_due(&mut self) {
        if let Some(run) = self.run
            && self.since.elapsed() >= run
        {
            self.rest().await;
        }
    }

    /// Rests as long as the work since the last rest took.
    pub async fn rest(&mut self) {
        if self.run.is_none() {
            return;
        }
        let took = self.since.elapsed();
        if self.until.is_none_or(|until| Instant::now() + took < until) {
            tokio::time::sleep(took).await;
        }
        self.since = Instant::now();
    }
}

/// An archive that records what it is asked to write, or fails on demand.
#[cfg(test)]
pub(crate) mod recording {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;

    use super::JournalBatch;
    use crate::domain::ports::{HeldSink, SessionArchive, SettingsError};
    use crate::domain::{PoolKey, Session};

    #[derive(Default)]
    pub(crate) struct Recorder {
        written: Mutex<Vec<JournalBatch>>,
        pub(crate) down: AtomicBool,
        /// Writes that fail once this many have been recorded.
        fail_from: Mutex<Option<usize>>,
    }

    #[async_trait]
    impl SessionArchive for Recorder {
        async fn save(&self, _: &[(PoolKey, Session)]) -> Result<(), SettingsError> {
            Ok(())
        }
        async fn take(&self) -> Result<Vec<(PoolKey, Session)>, SettingsError> {
            Ok(Vec::new())
        }
        async fn held_into(&self, _: HeldSink) -> Result<(), SettingsError> {
            Ok(())
        }
        async fn write(&self, batch: &JournalBatch) -> Result<(), SettingsError> {
            let failing = self.fail_from.lock().ok().and_then(|f| *f);
            if self.down.load(Ordering::Relaxed) || failing.is_some_and(|from| self.writes() >= from) {
                return Err(SettingsError::Database("down".into()));
            }
            if let Ok(mut written) = self.written.lock() {
                written.push(batch.clone());
            }
            Ok(())
        }
    }

    impl Recorder {
        /// The last batch written (empty if none).
        pub(crate) fn last(&self) -> JournalBatch {
            self.written
                .lock()
                .ok()
                .and_then(|w| w.last().cloned())
                .unwrap_or_default()
        }

        pub(crate) fn writes(&self) -> usize {
            self.written.lock().map(|w| w.len()).unwrap_or_default()
        }

        /// Lets `n` more writes succeed, then fails every one.
        pub(crate) fn fail_after(&self, n: usize) {
            let from = self.writes() + n;
            if let Ok(mut fail_from) = self.fail_from.lock() {
                *fail_from = Some(from);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::recording::Recorder;
    use super::*;
    use crate::domain::SessionState;

    /// Yields, and counts how often it was asked to.
    #[derive(Default)]
    struct Yield(std::sync::atomic::AtomicUsize);

    impl Pause for Yield {
        async fn pause(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
            tokio::task::yield_now().await;
        }
    }

    fn pool() -> Arc<PoolKey> {
        Arc::new(PoolKey::from_ids("p", "c", "o"))
    }

    fn gone(s: &Session) -> Ended {
        Ended {
            id: s.id,
            created_at: s.created_at,
        }
    }

    fn session() -> Session {
        Session {
            id: SessionId::random(),
            name: "tv".into(),
            state: SessionState::Pending,
            expires_at: 10,
            holder: None,
            created_at: 0,
        }
    }

    #[tokio::test]
    async fn a_session_granted_and_ended_within_one_interval_is_never_written() {
        let (journal, db) = (Journal::new(), Recorder::default());
        let s = session();
        journal.added(&pool(), &s);
        journal.removed(&s);
        assert!(journal.is_empty());
        assert_eq!(journal.flush(&db).await.unwrap(), 0);
        assert_eq!(db.writes(), 0, "an empty journal opens no transaction");
    }

    #[tokio::test]
    async fn a_session_written_once_is_deleted_when_it_ends_later() {
        let (journal, db) = (Journal::new(), Recorder::default());
        let (p, s) = (pool(), session());
        journal.added(&p, &s);
        assert_eq!(journal.flush(&db).await.unwrap(), 1);
        assert_eq!(db.last().put, vec![(p, s.clone())]);
        journal.removed(&s);
        journal.flush(&db).await.unwrap();
        assert_eq!(db.last().delete, vec![gone(&s)]);
        assert!(db.last().put.is_empty());
    }

    /// The changes are split evenly by session id, so no part grows much past
    /// its share (the reason they are split); with the cluster's shard bits in
    /// the ids too, since a store may make its ids so.
    #[test]
    fn changes_spread_over_every_part() {
        let journal = Journal::new();
        let p = pool();
        for n in 0..PARTS * 1_000 {
            let mut s = session();
            if n % 2 == 0 {
                s.id = SessionId::random_in(7);
            }
            journal.added(&p, &s);
        }
        let sizes: Vec<_> = journal.pending.iter().map(|part| lock(part).len()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), PARTS * 1_000);
        assert!(sizes.iter().all(|&n| (500..2_000).contains(&n)), "{sizes:?}");
    }

    #[tokio::test]
    async fn many_changes_of_one_session_coalesce_to_the_last() {
        let (journal, db) = (Journal::new(), Recorder::default());
        let (p, s) = (pool(), session());
        journal.added(&p, &s);
        journal.flush(&db).await.unwrap();
        // Ended, then put again (its row still there): one put.
        journal.removed(&s);
        journal.added(&p, &s);
        assert_eq!(journal.len(), 1);
        journal.flush(&db).await.unwrap();
        assert_eq!(db.last().put.len(), 1);
        assert!(db.last().delete.is_empty());
        // The put replaced a delete, so the row exists: ending it deletes it.
        journal.removed(&s);
        journal.flush(&db).await.unwrap();
        assert_eq!(db.last().delete, vec![gone(&s)]);
    }

    /// Chunks of at most `n` changes, puts before deletes, that together are
    /// every change of the batch once; for every size around `n`.
    #[test]
    fn a_batch_splits_into_bounded_chunks_of_every_change_once_puts_first() {
        let p = pool();
        for (puts, deletes) in [(0, 0), (12, 5), (5, 12), (10, 0), (0, 10), (4, 1), (1, 4)] {
            let mut batch = JournalBatch::default();
            let sessions: Vec<_> = (0..puts + deletes).map(|_| session()).collect();
            for s in &sessions[..puts] {
                batch.push_put(Put {
                    pool: Arc::clone(&p),
                    session: s.clone(),
                    stored: false,
                });
            }
            for s in &sessions[puts..] {
                batch.push_delete(s.id, s.created_at);
            }
            let all = batch.clone();
            let mut seen = JournalBatch::default();
            let mut puts_left = puts;
            while !batch.is_empty() {
                let chunk = batch.split_off(5);
                assert!(
                    !chunk.is_empty() && chunk.len() <= 5,
                    "{puts}+{deletes}: {}",
                    chunk.len()
                );
                assert!(chunk.delete.is_empty() || chunk.put.len() == puts_left, "puts first");
                puts_left -= chunk.put.len();
                seen.put.extend(chunk.put);
                seen.delete.extend(chunk.delete);
            }
            let ids = |b: &JournalBatch| {
                let mut put: Vec<_> = b.put.iter().map(|(_, s)| s.id).collect();
                let mut delete: Vec<_> = b.delete.iter().map(|e| e.id).collect();
                put.sort_unstable();
                delete.sort_unstable();
                (put, delete)
            };
            assert_eq!(ids(&seen), ids(&all), "{puts}+{deletes}: every change once");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_spread_flush_writes_every_change_in_bounded_transactions() {
        let (journal, db) = (Journal::new(), Recorder::default());
        let p = pool();
        let n = SPREAD_CHUNK * 2 + 7;
        let sessions: Vec<_> = (0..n).map(|_| session()).collect();
        for s in &sessions {
            journal.added(&p, s);
        }
        journal.flush(&db).await.unwrap();
        // Some of them end, some are restored: puts and deletes in one flush.
        for s in &sessions[..SPREAD_CHUNK] {
            journal.removed(s);
        }
        let fresh: Vec<_> = (0..SPREAD_CHUNK).map(|_| session()).collect();
        for s in &fresh {
            journal.added(&p, s);
        }
        let pauses = Yield::default();
        let written = journal
            .flush_spread(&db, Duration::from_secs(1), &pauses)
            .await
            .unwrap();
        assert_eq!(written, SPREAD_CHUNK * 2);
        assert_eq!(
            pauses.0.load(Ordering::Relaxed),
            (SPREAD_CHUNK * 2).div_ceil(TAKE_BITE) - 1,
            "a pause between two bites of the take"
        );
        assert_eq!(db.writes(), 3 + 2, "two transactions of a chunk each");
        assert!(journal.is_empty());
    }

    /// The last flush (a shutdown's) writes in bounded transactions too, and a
    /// failure keeps only what was not written. Fails if a flush were one
    /// transaction again.
    #[tokio::test]
    async fn a_flush_writes_in_bounded_transactions_and_keeps_what_a_failure_left() {
        let (journal, db) = (Journal::new(), Recorder::default());
        let p = pool();
        let sessions: Vec<_> = (0..SPREAD_CHUNK * 2 + 7).map(|_| session()).collect();
        for s in &sessions {
            journal.added(&p, s);
        }
        assert_eq!(journal.flush(&db).await.unwrap(), sessions.len());
        assert_eq!(db.writes(), 3, "two full chunks and the rest");
        assert!(db.last().len() <= SPREAD_CHUNK);
        assert!(journal.is_empty());

        for s in &sessions {
            journal.removed(s);
        }
        db.fail_after(1);
        assert!(journal.flush(&db).await.is_err());
        assert_eq!(
            journal.len(),
            sessions.len() - SPREAD_CHUNK,
            "the chunk written is not kept"
        );
    }

    /// A run's rest is as long as the run, once it is due; none past the
    /// deadline; never any unpaced.
    #[tokio::test(start_paused = true)]
    async fn a_pace_rests_as_long_as_the_work_took_until_its_deadline() {
        let start = Instant::now();
        let mut pace = Pace::every(Duration::from_millis(10)).until(start + Duration::from_millis(100));
        tokio::time::advance(Duration::from_millis(4)).await;
        pace.rest_if_due().await;
        assert_eq!(start.elapsed(), Duration::from_millis(4), "a run not yet over: no rest");
        tokio::time::advance(Duration::from_millis(26)).await;
        pace.rest_if_due().await;
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(60),
            "30 ms of work, 30 ms of rest"
        );
        tokio::time::advance(Duration::from_millis(25)).await;
        pace.rest().await;
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(85),
            "a rest to 110 ms would pass the deadline"
        );
        let mut unpaced = Pace::unpaced();
        tokio::time::advance(Duration::from_millis(50)).await;
        unpaced.rest_if_due().await;
        unpaced.rest().await;
        assert_eq!(start.elapsed(), Duration::from_millis(135));
    }

    #[tokio::test(start_paused = true)]
    async fn a_spread_flush_that_fails_keeps_every_change_for_the_next() {
        let (journal, db) = (Journal::new(), Recorder::default());
        let p = pool();
        for _ in 0..SPREAD_CHUNK * 3 {
            journal.added(&p, &session());
        }
        db.down.store(true, Ordering::Relaxed);
        assert!(
            journal
                .flush_spread(&db, Duration::from_secs(1), &Yield::default())
                .await
                .is_err()
        );
        assert_eq!(journal.len(), SPREAD_CHUNK * 3, "nothing is lost");
        db.down.store(false, Ordering::Relaxed);
        assert_eq!(
            journal
                .flush_spread(&db, Duration::from_secs(1), &Yield::default())
                .await
                .unwrap(),
            SPREAD_CHUNK * 3
        );
        assert_eq!(db.writes(), 3);
    }

    #[tokio::test]
    async fn a_failed_write_is_kept_and_newer_changes_win() {
        let (journal, db) = (Journal::new(), Recorder::default());
        let (p, kept, ended) = (pool(), session(), session());
        journal.added(&p, &kept);
        journal.added(&p, &ended);
        db.down.store(true, Ordering::Relaxed);
        assert!(journal.flush(&db).await.is_err());
        assert_eq!(journal.len(), 2, "nothing is lost while the database is down");
        // Ended after the failed write: its row may exist, so it must be deleted.
        journal.removed(&ended);
        db.down.store(false, Ordering::Relaxed);
        assert_eq!(journal.flush(&db).await.unwrap(), 2);
        let batch = db.last();
        assert_eq!(batch.put, vec![(p, kept)]);
        assert_eq!(batch.delete, vec![gone(&ended)]);
        assert!(journal.is_empty());
    }

    /// A batch put back after a failed write never overrides a change recorded
    /// while it was being written, puts and deletes being kept apart.
    #[tokio::test]
    async fn a_batch_put_back_yields_to_the_changes_recorded_during_its_write() {
        let (journal, db) = (Journal::new(), Recorder::default());
        let (p, ended, granted) = (pool(), session(), session());
        journal.removed(&ended);
        journal.added(&p, &granted);
        journal.put_back(JournalBatch {
            put: vec![(Arc::clone(&p), ended.clone())],
            delete: vec![gone(&granted)],
        });
        assert_eq!(journal.len(), 2);
        journal.flush(&db).await.unwrap();
        assert_eq!(db.last().put, vec![(p, granted)]);
        assert_eq!(db.last().delete, vec![gone(&ended)]);
    }
}
