//! Which sessions the memory store holds, kept as they come and go, so that nothing
//! a client can reach has to walk every pool: `GET /health` and `/metrics` read
//! counters by state, and a look-up by session id (admin API,
//! `DELETE /sessions/{id}`) reads an index.
//! Each change is also recorded in the session journal, when there is one.
//!
//! The store tells the roster of every session it adds or removes while it holds
//! that pool's lock, so the index and the counters are exact, never eventually so.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use dashmap::DashMap;

use crate::domain::journal::Journal;
use crate::domain::ports::SessionsByState;
use crate::domain::{PoolKey, Session, SessionId};

/// Shards of each of the memory store's maps (pools, customers, the session-id
/// index). A shard's table grows by doubling, rehashing every entry while its lock
/// is held: with a million customers and dashmap's default of 4 shards per core,
/// one growth moves over a hundred thousand entries, a pause of milliseconds for
/// every request that hashes into that shard. With 256 shards each growth moves
/// 1/256th of the map. An empty shard costs 128 bytes.
const SHARDS: usize = 256;

/// An empty map of the memory store, in [`SHARDS`] shards, with a hasher seeded
/// at random.
pub(crate) fn sharded<K: Eq + std::hash::Hash, V>() -> DashMap<K, V, foldhash::fast::RandomState> {
    DashMap::with_hasher_and_shard_amount(foldhash::fast::RandomState::default(), SHARDS)
}

/// Session ids are random UUIDs, hashed on every admission and end: foldhash is
/// cheap and still seeded at random per map. The value shares the pool's key with
/// the pool map, so an entry costs an id and a pointer.
type Index = DashMap<SessionId, Arc<PoolKey>, foldhash::fast::RandomState>;

pub(crate) struct Roster {
    index: Index,
    /// Pending, live and detached sessions: moved by each pool operation by the
    /// difference it made to its pool, so `/metrics` reads them without a walk.
    states: [AtomicI64; 3],
    journal: Option<Arc<Journal>>,
}

impl Roster {
    pub(crate) fn new(journal: Option<Arc<Journal>>) -> Self {
        Self {
            index: sharded(),
            states: Default::default(),
            journal,
        }
    }

    /// A session was granted into `pool`.
    pub(crate) fn added(&self, pool: &Arc<PoolKey>, session: &Session) {
        self.insert(pool, session.id);
        if let Some(journal) = &self.journal {
            journal.added(pool, session);
        }
    }

    /// A session from the last run was put back into `pool`.
    pub(crate) fn restored(&self, pool: &Arc<PoolKey>, session: &Session) {
        self.insert(pool, session.id);
        if let Some(journal) = &self.journal {
            journal.restored(pool, session);
        }
    }

    /// A session left its pool, whatever the reason.
    pub(crate) fn removed(&self, session: &Session) {
        self.index.remove(&session.id);
        if let Some(journal) = &self.journal {
            journal.removed(session);
        }
    }

    fn insert(&self, pool: &Arc<PoolKey>, id: SessionId) {
        self.index.insert(id, Arc::clone(pool));
    }

    /// The pool holding session `id`.
    pub(crate) fn locate(&self, id: SessionId) -> Option<PoolKey> {
        self.index.get(&id).map(|pool| PoolKey::clone(pool.value()))
    }

    /// A pool operation changed the states of its pool's sessions from `before`
    /// to `after` ([`crate::domain::pool::Pool::tally`]).
    pub(crate) fn shift(&self, before: [i64; 3], after: [i64; 3]) {
        for ((counter, b), a) in self.states.iter().zip(before).zip(after) {
            if a != b {
                counter.fetch_add(a - b, Ordering::Relaxed);
            }
        }
    }

    /// How many sessions are pending, live and detached.
    pub(crate) fn by_state(&self) -> SessionsByState {
        let read = |i: usize| u64::try_from(self.states[i].load(Ordering::Relaxed)).unwrap_or(0);
        SessionsByState {
            pending: Some(read(0)),
            live: read(1),
            detached: Some(read(2)),
        }
    }
}
