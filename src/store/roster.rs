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

/// Entries a map of the memory store keeps room for whatever its load: below
/// this, the room a trim would give back (a few megabytes at most) is worth
/// less than growing the tables again.
pub(crate) const TRIM_FLOOR: usize = 1 << 16;

/// Whether a table with room for `capacity` entries and `len` in it holds room
/// worth giving back: above [`TRIM_FLOOR`] and less than a quarter used, which
/// only a burst (a flood of creates that all expired) leaves. A table in steady
/// churn stays within about twice its entries (`benches/churn.rs`), so it is
/// never trimmed only to grow again.
pub(crate) fn roomy(len: usize, capacity: usize) -> bool {
    capacity > TRIM_FLOOR && len < capacity / 4
}

/// Gives back the room of `map` if [`roomy`]: each shard in turn is rebuilt at
/// its size under its lock, a pause of microseconds for the requests that hash
/// into it. Whether it was.
pub(crate) fn trim<K: Eq + std::hash::Hash, V>(map: &DashMap<K, V, foldhash::fast::RandomState>) -> bool {
    if !roomy(map.len(), map.capacity()) {
        return false;
    }
    map.shrink_to_fit();
    true
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

    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.index.capacity()
    }

    /// Gives back the room of the session-id index if a burst left it mostly
    /// empty ([`trim`]).
    pub(crate) fn trim(&self) -> bool {
        trim(&self.index)
    }

    /// A session was granted into `pool`.
    pub(crate) fn added(&self, pool: &Arc<PoolKey>, session: &Session) {
        self.insert(pool, session.id);
        if let Some(journal) = &self.journal {
            journal.added(pool, session);
        }
    }

    /// A session from the last run was put back into `pool`. Not journaled: with
    /// the journal on, a start restores the journal's own sessions, whose rows
    /// stay. (Written again, a start held every one of them in the journal's
    /// pending map and doubled the log into a compaction.)
    pub(crate) fn restored(&self, pool: &Arc<PoolKey>, session: &Session) {
        self.insert(pool, session.id);
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
