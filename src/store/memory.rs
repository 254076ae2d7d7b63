//! The session pools in this process's memory.
//!
//! One map entry per pool: the map's shard lock makes each operation on a pool
//! atomic, and different pools never wait for each other beyond a shard. Empty
//! pools are removed, so memory follows the sessions held, not the customers seen.

use async_trait::async_trait;
use dashmap::DashMap;

use crate::domain::liveness::is_dead;
use crate::domain::pool::{Attached, Granted, LimitExceeded, NewSession, Pool, TakenOver};
use crate::domain::ports::{SessionStore, StoreError};
use crate::domain::{Holder, Millis, PoolKey, Session, SessionId, Timings};

/// Pool keys are hashed on every operation: foldhash is several times faster than
/// the default SipHash, and still seeded at random per map.
type Pools = DashMap<PoolKey, Pool, foldhash::fast::RandomState>;

pub struct MemoryStore {
    pools: Pools,
    timings: Timings,
}

impl MemoryStore {
    pub fn new(timings: Timings) -> Self {
        Self {
            pools: Pools::default(),
            timings,
        }
    }

    /// Runs `f` on an existing pool and drops the pool if `f` left it empty.
    fn with_pool<R>(&self, key: &PoolKey, f: impl FnOnce(&mut Pool) -> R) -> Option<R> {
        let (result, empty) = {
            let mut pool = self.pools.get_mut(key)?;
            let result = f(&mut pool);
            (result, pool.is_empty())
        };
        if empty {
            self.pools.remove_if(key, |_, p| p.is_empty());
        }
        Some(result)
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn admit(
        &self,
        pool: &PoolKey,
        new: NewSession,
        limit: u32,
        now: Millis,
    ) -> Result<Result<Granted, LimitExceeded>, StoreError> {
        let mut new = Some(new);
        let existing = self.with_pool(pool, |p| new.take().map(|n| p.admit(n, limit, now, &self.timings)));
        if let Some(outcome) = existing.flatten() {
            return Ok(outcome);
        }
        // No pool yet (or it was emptied and dropped since): the entry API holds the
        // shard lock for the whole admission.
        let Some(new) = new else {
            return Err(StoreError::Unavailable("admission lost its request".into()));
        };
        let (outcome, empty) = {
            let mut pool = self.pools.entry(pool.clone()).or_default();
            let outcome = pool.admit(new, limit, now, &self.timings);
            (outcome, pool.is_empty())
        };
        if empty {
            // A limit of 0 refused the first session: keep no empty pool behind.
            self.pools.remove_if(pool, |_, p| p.is_empty());
        }
        Ok(outcome)
    }

    async fn take_over(
        &self,
        pool: &PoolKey,
        victim: SessionId,
        new: NewSession,
        now: Millis,
    ) -> Result<Option<TakenOver>, StoreError> {
        Ok(self
            .with_pool(pool, |p| p.take_over(victim, new, now, &self.timings))
            .flatten())
    }

    async fn attach(
        &self,
        pool: &PoolKey,
        id: SessionId,
        holder: Holder,
        now: Millis,
    ) -> Result<Option<Attached>, StoreError> {
        Ok(self
            .with_pool(pool, |p| p.attach(id, holder, now, &self.timings))
            .flatten())
    }

    async fn heartbeat(&self, pool: &PoolKey, id: SessionId, holder: Holder, now: Millis) -> Result<bool, StoreError> {
        Ok(self
            .with_pool(pool, |p| p.heartbeat(id, holder, now, &self.timings))
            .unwrap_or(false))
    }

    async fn detach(&self, pool: &PoolKey, id: SessionId, holder: Holder, now: Millis) -> Result<bool, StoreError> {
        Ok(self
            .with_pool(pool, |p| p.detach(id, holder, now, &self.timings))
            .unwrap_or(false))
    }

    async fn end(
        &self,
        pool: &PoolKey,
        id: SessionId,
        holder: Option<Holder>,
        now: Millis,
    ) -> Result<Option<Session>, StoreError> {
        Ok(self.with_pool(pool, |p| p.end(id, holder, now)).flatten())
    }

    async fn list(&self, pool: &PoolKey, now: Millis) -> Result<Vec<Session>, StoreError> {
        Ok(self
            .with_pool(pool, |p| {
                p.prune(now);
                p.sessions.clone()
            })
            .unwrap_or_default())
    }

    async fn locate(&self, id: SessionId) -> Result<Option<PoolKey>, StoreError> {
        Ok(self
            .pools
            .iter()
            .find(|entry| entry.value().get(id).is_some())
            .map(|entry| entry.key().clone()))
    }

    /// Finds the pools holding dead sessions under read locks, then prunes them one
    /// by one, yielding now and then: a sweep over a hundred thousand pools must not
    /// stall admissions (a `retain` would write-lock each shard for its whole scan).
    async fn reap(&self, now: Millis) -> Result<Vec<(PoolKey, Session)>, StoreError> {
        let candidates: Vec<PoolKey> = self
            .pools
            .iter()
            .filter(|entry| entry.value().sessions.iter().any(|s| is_dead(s.expires_at, now)))
            .map(|entry| entry.key().clone())
            .collect();
        let mut dead = Vec::new();
        for (i, key) in candidates.into_iter().enumerate() {
            if let Some(pruned) = self.with_pool(&key, |p| p.prune(now)) {
                dead.extend(pruned.into_iter().map(|s| (key.clone(), s)));
            }
            if i % 256 == 255 {
                tokio::task::yield_now().await;
            }
        }
        Ok(dead)
    }

    async fn snapshot(&self) -> Result<Vec<(PoolKey, Session)>, StoreError> {
        Ok(self
            .pools
            .iter()
            .flat_map(|entry| {
                let key = entry.key().clone();
                entry
                    .value()
                    .sessions
                    .iter()
                    .map(|s| (key.clone(), s.clone()))
                    .collect::<Vec<_>>()
            })
            .collect())
    }

    async fn restore(&self, sessions: Vec<(PoolKey, Session)>) -> Result<(), StoreError> {
        for (key, session) in sessions {
            let mut pool = self.pools.entry(key).or_default();
            if pool.get(session.id).is_none() {
                pool.sessions.push(session);
            }
        }
        Ok(())
    }

    async fn count(&self) -> Result<usize, StoreError> {
        Ok(self.pools.iter().map(|e| e.value().sessions.len()).sum())
    }
}
