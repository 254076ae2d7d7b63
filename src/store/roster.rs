//! Which sessions the memory store holds, kept as they come and go, so that nothing
//! a client can reach has to walk every pool: `GET /health` reads a counter and a
//! look-up by session id (admin API, `DELETE /sessions/{id}`) reads an index.
//! Each change is also recorded in the session journal, when there is one.
//!
//! The store tells the roster of every session it adds or removes while it holds
//! that pool's lock, so the index and the counter are exact, never eventually so.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;

use crate::domain::journal::Journal;
use crate::domain::{PoolKey, Session, SessionId};

/// Session ids are random UUIDs, hashed on every admission and end: foldhash is
/// cheap and still seeded at random per map. The value shares the pool's key with
/// the pool map, so an entry costs an id and a pointer.
type Index = DashMap<SessionId, Arc<PoolKey>, foldhash::fast::RandomState>;

#[derive(Default)]
pub(crate) struct Roster {
    index: Index,
    /// Equal to `index.len()`, which would visit every shard to count.
    held: AtomicUsize,
    journal: Option<Arc<Journal>>,
}

impl Roster {
    pub(crate) fn new(journal: Option<Arc<Journal>>) -> Self {
        Self {
            journal,
            ..Self::default()
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
        if self.index.remove(&session.id).is_some() {
            self.held.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(journal) = &self.journal {
            journal.removed(session.id);
        }
    }

    fn insert(&self, pool: &Arc<PoolKey>, id: SessionId) {
        if self.index.insert(id, Arc::clone(pool)).is_none() {
            self.held.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The pool holding session `id`.
    pub(crate) fn locate(&self, id: SessionId) -> Option<PoolKey> {
        self.index.get(&id).map(|pool| PoolKey::clone(pool.value()))
    }

    /// How many sessions are held.
    pub(crate) fn count(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}
