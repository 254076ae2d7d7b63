//! The session pools in this process's memory.
//!
//! One map entry per pool: the map's shard lock makes each operation on a pool
//! atomic, and different pools never wait for each other beyond a shard. Empty
//! pools are removed, so memory follows the sessions held, not the customers seen.
//!
//! Sessions that nobody holds (pending ones waiting for their player, detached
//! ones waiting for a reconnect) can die unattended. Their pools are queued by
//! deadline, so the sweep visits only the pools whose time has come instead of
//! scanning every pool: with a hundred thousand customers, a scan would stall
//! admissions for tens of milliseconds each second. Live sessions need no queue:
//! their socket watches their PONG deadline.
//!
//! Every session added or removed, dead ones that an operation prunes included, is
//! told to the [`Roster`] under the pool's lock: it keeps the counts by state, the index by
//! session id and the session journal exact.
//!
//! Each customer's open pools are also listed ([`customers`]), so a customer
//! cannot hold sessions in more pools than `Limits::pools_per_customer`, and an
//! operator's look at one customer (list, end all) visits that customer's pools only.

mod customers;
mod open;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use dashmap::DashMap;

pub use open::open;

use super::roster::{self, Roster, sharded};
use crate::domain::journal::Journal;
use crate::domain::listing::{SessionPage, SessionQuery};
use crate::domain::pool::{
    ActiveSession, Attached, Granted, LimitExceeded, Limits, NewSession, Pool, Refusal, TakenOver,
};
use crate::domain::ports::{
    EndCause, Heartbeat, LocalSessions, NoEvents, Reaped, SessionEvents, SessionStore, SessionsByState, StoreError,
};
use crate::domain::{Customer, Holder, Millis, PoolKey, Session, SessionId, SessionState, Timings};
use customers::{Customers, OpenPools};

/// Pool keys are hashed on every operation: foldhash is several times faster than
/// the default SipHash, and still seeded at random per map. Keys are shared with
/// the expiry queues, hence the `Arc`.
type Pools = DashMap<Arc<PoolKey>, Pool, foldhash::fast::RandomState>;

/// Pools to look at once a deadline passes, in (nearly) deadline order: every
/// entry of one queue is "now + the same allowance", so pushing keeps it sorted.
struct ExpiryQueue {
    queue: Mutex<VecDeque<(Millis, Arc<PoolKey>)>>,
    /// The first entry's deadline (`Millis::MAX`: none), written under the lock:
    /// asking whether anything is due reads it without the lock. Every
    /// admission asks (`LocalSessions::any_due`), and the answer is nearly always
    /// no, so a lock taken for it would be a second lock of this queue per
    /// admission, shared by every request thread. A stale read only moves a bite
    /// to the next asker.
    first: AtomicU64,
}

impl Default for ExpiryQueue {
    fn default() -> Self {
        Self {
            queue: Mutex::default(),
            first: AtomicU64::new(Millis::MAX),
        }
    }
}

impl ExpiryQueue {
    fn push(&self, at: Millis, key: Arc<PoolKey>) {
        if let Ok(mut queue) = self.queue.lock() {
            if queue.is_empty() {
                self.first.store(at, Ordering::Relaxed);
            }
            queue.push_back((at, key));
        }
    }

    /// Whether the first deadline has come, from the last one written.
    fn first_due(&self, now: Millis) -> bool {
        self.first.load(Ordering::Relaxed) <= now
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.queue.lock().map_or(0, |queue| queue.capacity())
    }

    /// Gives back the queue's room if a burst left it mostly empty; whether it did.
    fn trim(&self) -> bool {
        let Ok(mut queue) = self.queue.lock() else {
            return false;
        };
        if !roster::roomy(queue.len(), queue.capacity()) {
            return false;
        }
        queue.shrink_to_fit();
        true
    }

    /// Takes at most `max` of the pools whose deadline has come, and says whether
    /// more are due.
    fn due(&self, now: Millis, max: usize, into: &mut Vec<Arc<PoolKey>>) -> bool {
        if !self.first_due(now) {
            return false;
        }
        let Ok(mut queue) = self.queue.lock() else {
            return false;
        };
        let mut taken = 0;
        let more = loop {
            match queue.front() {
                Some((at, _)) if *at <= now => {}
                _ => break false,
            }
            if taken == max {
                break true;
            }
            if let Some((_, key)) = queue.pop_front() {
                into.push(key);
                taken += 1;
            }
        };
        let first = queue.front().map_or(Millis::MAX, |(at, _)| *at);
        self.first.store(first, Ordering::Relaxed);
        more
    }
}

pub struct MemoryStore {
    pools: Pools,
    customers: Customers,
    timings: Timings,
    pending: ExpiryQueue,
    detached: ExpiryQueue,
    roster: Roster,
    /// Told of the sessions this store finds dead (those nobody ended).
    events: Arc<dyn SessionEvents>,
}

impl MemoryStore {
    pub fn new(timings: Timings) -> Self {
        Self::build(timings, None)
    }

    /// A store that records in `journal` every session it adds or removes.
    pub fn with_journal(timings: Timings, journal: Arc<Journal>) -> Self {
        Self::build(timings, Some(journal))
    }

    fn build(timings: Timings, journal: Option<Arc<Journal>>) -> Self {
        Self {
            pools: sharded(),
            customers: Customers::default(),
            timings,
            pending: ExpiryQueue::default(),
            detached: ExpiryQueue::default(),
            roster: Roster::new(journal),
            events: Arc::new(NoEvents),
        }
    }

    /// Reports the sessions it finds dead to `events`.
    pub fn observed(mut self, events: Arc<dyn SessionEvents>) -> Self {
        self.events = events;
        self
    }

    /// Drops the sessions of `pool` that are dead at `now` and tells the roster.
    /// Every operation starts with this, at the same `now` as the rules it then
    /// applies, so the rules' own pruning finds nothing left to remove unseen.
    fn settle(&self, pool: &mut Pool, now: Millis) -> Vec<Session> {
        let dead = pool.prune(now);
        for session in &dead {
            self.roster.removed(session);
        }
        dead
    }

    /// Tells the events of sessions found dead, after the pool's lock is released
    /// (an event is also a log line).
    fn report_dead(&self, key: &PoolKey, dead: &[Session]) {
        for session in dead {
            self.events.ended(key, session.id, EndCause::of_dead(session.state));
        }
    }

    /// Runs `f` on an existing pool (with its shared key and the sessions found
    /// dead at `now`, already removed: those `f` leaves in the vector are reported
    /// as ended here) and drops the pool if it is left empty.
    fn with_pool<R>(
        &self,
        key: &PoolKey,
        now: Millis,
        f: impl FnOnce(&Arc<PoolKey>, &mut Pool, &mut Vec<Session>) -> R,
    ) -> Option<R> {
        let (result, emptied, dead) = {
            let mut entry = self.pools.get_mut(key)?;
            let (key, pool) = entry.pair_mut();
            let before = pool.tally();
            let mut dead = self.settle(pool, now);
            let result = f(key, pool, &mut dead);
            self.roster.shift(before, pool.tally());
            (result, pool.is_empty().then(|| Arc::clone(key)), dead)
        };
        self.report_dead(key, &dead);
        if let Some(key) = emptied {
            self.customers.with(&key, |open| self.drop_if_empty(&key, open));
        }
        Some(result)
    }

    /// Removes the pool `key` if it is (still) empty; under its customer's lock.
    fn drop_if_empty(&self, key: &Arc<PoolKey>, open: &mut OpenPools) {
        if self.pools.remove_if(key.as_ref(), |_, p| p.is_empty()).is_some() {
            open.retain(|k| k != key);
        }
    }

    /// The first session of a pool that is not in the map: opens the pool if its
    /// customer may hold one more. Under the customer's lock, so no other pool
    /// of the customer opens or closes meanwhile.
    fn open_pool(
        &self,
        key: &Arc<PoolKey>,
        open: &mut OpenPools,
        new: NewSession,
        limits: Limits,
        now: Millis,
    ) -> Result<Granted, Refusal> {
        // Another request may have opened it since we looked: then it counts already.
        let known = open.iter().any(|k| k == key);
        if !known && !limits.may_open_pool(open.len()) {
            // Pools whose sessions all died since count no more.
            open.retain(|k| {
                let alive = self.pools.get_mut(k.as_ref()).is_some_and(|mut p| {
                    let before = p.tally();
                    let dead = self.settle(&mut p, now);
                    self.roster.shift(before, p.tally());
                    self.report_dead(k, &dead);
                    !p.is_empty()
                });
                alive
                    || (self.pools.remove_if(k.as_ref(), |_, p| p.is_empty()).is_none()
                        && self.pools.contains_key(k.as_ref()))
            });
            if !limits.may_open_pool(open.len()) {
                return Err(Refusal::TooManyPools);
            }
        }
        let (outcome, empty) = {
            let mut entry = self.pools.entry(Arc::clone(key)).or_default();
            let (key, p) = entry.pair_mut();
            // Another admission may have created the pool meanwhile.
            let before = p.tally();
            let dead = self.settle(p, now);
            let outcome = p.admit(new, limits.sessions, now, &self.timings);
            if let Ok(granted) = &outcome {
                self.roster.added(key, &granted.session);
                self.watch_pending(key, now);
            }
            self.roster.shift(before, p.tally());
            self.report_dead(key, &dead);
            (outcome, p.is_empty())
        };
        if empty {
            // A limit of 0 refused the first session: keep no empty pool behind.
            self.drop_if_empty(key, open);
        } else if !known {
            // Most customers hold one pool: no room for four.
            open.reserve_exact(1);
            open.push(Arc::clone(key));
        }
        outcome.map_err(Refusal::Full)
    }

    /// Admission under a household cap (`Limits::customer_sessions`): under the
    /// customer's lock, so no other admission of the customer runs meanwhile,
    /// the sessions alive in each of its pools are counted before the grant.
    /// Takeovers need not wait for the lock: they swap a session for another
    /// and never change the count. The pool's own limit is checked first, so a
    /// full pool is refused as `Full` and its offer's `onLimit` applies.
    fn admit_in_household(
        &self,
        key: &Arc<PoolKey>,
        open: &mut OpenPools,
        new: NewSession,
        limits: Limits,
        now: Millis,
    ) -> Result<Granted, Refusal> {
        let mut held = Vec::new();
        let mut own_full = None;
        let mut emptied = Vec::new();
        for k in open.iter() {
            let Some(mut p) = self.pools.get_mut(k.as_ref()) else {
                continue;
            };
            let before = p.tally();
            let dead = self.settle(&mut p, now);
            self.roster.shift(before, p.tally());
            self.report_dead(k, &dead);
            let active = p.sessions.iter().map(|s| ActiveSession {
                id: s.id,
                name: s.name.clone(),
            });
            if k == key && p.sessions.len() >= limits.sessions as usize {
                own_full = Some(LimitExceeded {
                    active: active.collect(),
                });
            }
            held.extend(p.sessions.iter().map(|s| (s.created_at, s.id, s.name.clone())));
            if p.is_empty() && k != key {
                emptied.push(Arc::clone(k));
            }
        }
        for k in &emptied {
            self.drop_if_empty(k, open);
        }
        if let Some(full) = own_full {
            return Err(Refusal::Full(full));
        }
        if !limits.household_has_room(held.len()) {
            // Oldest first across the pools, as the Redis script lists them.
            held.sort_unstable();
            let active = held
                .into_iter()
                .map(|(_, id, name)| ActiveSession { id, name })
                .collect();
            return Err(Refusal::Household(LimitExceeded { active }));
        }
        self.open_pool(key, open, new, limits, now)
    }

    /// A session of `key` was granted and waits for its player.
    fn watch_pending(&self, key: &Arc<PoolKey>, now: Millis) {
        let at = self.timings.deadline(SessionState::Pending, now);
        self.pending.push(at, Arc::clone(key));
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn admit(
        &self,
        pool: &PoolKey,
        new: NewSession,
        limits: Limits,
        now: Millis,
    ) -> Result<Result<Granted, Refusal>, StoreError> {
        if limits.customer_sessions.is_some() {
            let key = Arc::new(pool.clone());
            return Ok(self
                .customers
                .with(&key, |open| self.admit_in_household(&key, open, new, limits, now)));
        }
        let mut new = Some(new);
        let existing = self.with_pool(pool, now, |key, p, _| {
            let outcome = p.admit(new.take()?, limits.sessions, now, &self.timings);
            if let Ok(granted) = &outcome {
                self.roster.added(key, &granted.session);
                self.watch_pending(key, now);
            }
            Some(outcome.map_err(Refusal::Full))
        });
        if let Some(outcome) = existing.flatten() {
            return Ok(outcome);
        }
        // No pool yet (or it was emptied and dropped since).
        let Some(new) = new else {
            return Err(StoreError::Unavailable("admission lost its request".into()));
        };
        let key = Arc::new(pool.clone());
        Ok(self
            .customers
            .with(&key, |open| self.open_pool(&key, open, new, limits, now)))
    }

    async fn take_over(
        &self,
        pool: &PoolKey,
        victim: SessionId,
        new: NewSession,
        now: Millis,
    ) -> Result<Option<TakenOver>, StoreError> {
        Ok(self
            .with_pool(pool, now, |key, p, _| {
                let done = p.take_over(victim, new, now, &self.timings)?;
                self.roster.removed(&done.victim);
                self.roster.added(key, &done.granted.session);
                self.watch_pending(key, now);
                Some(done)
            })
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
            .with_pool(pool, now, |key, p, _| {
                let attached = p.attach(id, holder, now, &self.timings)?;
                Some(Attached {
                    key: Some(PoolKey::clone(key)),
                    ..attached
                })
            })
            .flatten())
    }

    /// Written at once, under the pool's lock.
    async fn heartbeat(
        &self,
        pool: &PoolKey,
        id: SessionId,
        holder: Holder,
        now: Millis,
    ) -> Result<Heartbeat, StoreError> {
        let written = self
            .with_pool(pool, now, |_, p, _| p.heartbeat(id, holder, now, &self.timings))
            .unwrap_or(false);
        Ok(if written {
            Heartbeat::Written
        } else {
            Heartbeat::NotHeld
        })
    }

    async fn detach(&self, pool: &PoolKey, id: SessionId, holder: Holder, now: Millis) -> Result<bool, StoreError> {
        Ok(self
            .with_pool(pool, now, |key, p, _| {
                let detached = p.detach(id, holder, now, &self.timings);
                if detached {
                    let at = self.timings.deadline(SessionState::Detached, now);
                    self.detached.push(at, Arc::clone(key));
                }
                detached
            })
            .unwrap_or(false))
    }

    async fn end(
        &self,
        pool: &PoolKey,
        id: SessionId,
        holder: Option<Holder>,
        now: Millis,
    ) -> Result<Option<Session>, StoreError> {
        let ended = self.with_pool(pool, now, |_, p, _| {
            let ended = p.end(id, holder, now)?;
            self.roster.removed(&ended);
            Some(ended)
        });
        Ok(ended.flatten())
    }

    async fn list(&self, pool: &PoolKey, now: Millis) -> Result<Vec<Session>, StoreError> {
        Ok(self
            .with_pool(pool, now, |_, p, _| p.sessions.clone())
            .unwrap_or_default())
    }

    async fn customer_sessions(&self, query: &SessionQuery, now: Millis) -> Result<SessionPage, StoreError> {
        let mut found = Vec::new();
        for key in self.customers.pools_of(&query.customer) {
            if !query.wants_pool(key.offer_id()) {
                continue;
            }
            if let Some(sessions) = self.with_pool(&key, now, |_, p, _| p.sessions.clone()) {
                found.extend(sessions.into_iter().map(|s| (PoolKey::clone(&key), s)));
            }
        }
        Ok(query.page(found))
    }

    async fn end_customer(
        &self,
        customer: &Customer,
        offer_id: Option<&str>,
        now: Millis,
    ) -> Result<Vec<(PoolKey, Session)>, StoreError> {
        let mut ended = Vec::new();
        for key in self.customers.pools_of(customer) {
            if offer_id.is_some_and(|only| only != key.offer_id()) {
                continue;
            }
            // Under the pool's lock: every session of the pool ends at once, and
            // the emptied pool is dropped (with_pool) so it no longer counts.
            let emptied = self.with_pool(&key, now, |_, p, _| {
                let sessions = std::mem::take(&mut p.sessions);
                for s in &sessions {
                    self.roster.removed(s);
                }
                sessions
            });
            ended.extend(emptied.into_iter().flatten().map(|s| (PoolKey::clone(&key), s)));
        }
        Ok(ended)
    }

    async fn locate(&self, id: SessionId) -> Result<Option<PoolKey>, StoreError> {
        Ok(self.roster.locate(id))
    }

    async fn restore(&self, sessions: Vec<(PoolKey, Session)>) -> Result<(), StoreError> {
        for (key, session) in sessions {
            // Restored sessions come back as they were, whatever the cap on pools.
            // A pool already restored keeps its key: no new one for each session.
            let known = self.pools.get(&key).map(|pool| Arc::clone(pool.key()));
            let key = known.unwrap_or_else(|| Arc::new(key));
            self.customers.with(&key, |open| {
                let mut entry = self.pools.entry(Arc::clone(&key)).or_default();
                let (key, pool) = entry.pair_mut();
                if pool.get(session.id).is_none() {
                    let queue = match session.state {
                        SessionState::Pending => &self.pending,
                        _ => &self.detached,
                    };
                    queue.push(session.expires_at, Arc::clone(key));
                    self.roster.restored(key, &session);
                    let before = pool.tally();
                    pool.put_back(session);
                    self.roster.shift(before, pool.tally());
                }
                if !open.iter().any(|k| k == key) {
                    // As an admission does: most customers hold one pool.
                    open.reserve_exact(1);
                    open.push(Arc::clone(key));
                }
            });
        }
        Ok(())
    }

    fn by_state(&self) -> SessionsByState {
        self.roster.by_state()
    }

    /// Drops every session that died meanwhile (their players are gone, or
    /// stopped answering while the server was stopping), so neither the snapshot
    /// nor the journal brings them back, and detaches those a socket still held
    /// (one the shutdown dropped), as on every store. The one walk over every
    /// pool, at shutdown.
    async fn hand_over(&self, now: Millis) -> Result<(), StoreError> {
        self.pools.retain(|key, pool| {
            let before = pool.tally();
            let dead = self.settle(pool, now);
            let held: Vec<_> = pool.sessions.iter().filter_map(|s| Some((s.id, s.holder?))).collect();
            if !held.is_empty() {
                for (id, holder) in held {
                    pool.detach(id, holder, now, &self.timings);
                }
                let at = self.timings.deadline(SessionState::Detached, now);
                self.detached.push(at, Arc::clone(key));
            }
            self.roster.shift(before, pool.tally());
            self.report_dead(key, &dead);
            !pool.is_empty()
        });
        Ok(())
    }
}

/// The memory store is the only one whose sessions nothing else expires or keeps.
#[async_trait]
impl LocalSessions for MemoryStore {
    fn any_due(&self, now: Millis) -> bool {
        self.pending.first_due(now) || self.detached.first_due(now)
    }

    /// Visits only the pools whose queued deadline has come, at most `pools` of
    /// them: the caller yields between bites, so a wave of expiries does not
    /// stall admissions.
    async fn reap_some(&self, now: Millis, pools: usize) -> Result<Reaped, StoreError> {
        let mut due = Vec::new();
        let mut more = self.pending.due(now, pools, &mut due);
        more |= self.detached.due(now, pools - due.len(), &mut due);
        let mut dead = Vec::new();
        for key in due {
            // Returned, not reported: the caller tells the events of what it reaps.
            if let Some(pruned) = self.with_pool(&key, now, |_, _, dead| std::mem::take(dead)) {
                dead.extend(pruned.into_iter().map(|s| (PoolKey::clone(&key), s)));
            }
        }
        Ok(Reaped { dead, more })
    }

    fn trim(&self) -> usize {
        [
            roster::trim(&self.pools),
            self.customers.trim(),
            self.roster.trim(),
            self.pending.trim(),
            self.detached.trim(),
        ]
        .into_iter()
        .filter(|trimmed| *trimmed)
        .count()
    }

    async fn snapshot(&self) -> Result<Vec<(PoolKey, Session)>, StoreError> {
        Ok(self
            .pools
            .iter()
            .flat_map(|entry| {
                let key = entry.key();
                entry
                    .value()
                    .sessions
                    .iter()
                    .map(|s| (PoolKey::clone(key), s.clone()))
                    .collect::<Vec<_>>()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::journal::recording::Recorder;

    fn timings() -> Timings {
        Timings {
            ping_interval: Duration::from_secs(1),
            pong_timeout: Duration::from_secs(2),
            reconnect_grace: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(4),
        }
    }

    fn key(customer: &str) -> PoolKey {
        PoolKey::from_ids("p", customer, "o")
    }

    const ONE: Limits = Limits {
        sessions: 1,
        pools_per_customer: 2,
        customer_sessions: None,
    };

    fn limits(sessions: u32) -> Limits {
        Limits {
            sessions,
            pools_per_customer: 2,
            customer_sessions: None,
        }
    }

    fn new() -> NewSession {
        NewSession {
            id: SessionId::random(),
            name: "tv".into(),
        }
    }

    /// The queue answers "nothing due" from its first deadline without its lock:
    /// that deadline must follow the queue as it drains, empties and fills again.
    #[test]
    fn an_expiry_queue_is_due_at_its_first_deadline_through_drains_and_refills() {
        let queue = ExpiryQueue::default();
        let pool = Arc::new(key("a"));
        let mut taken = Vec::new();
        assert!(!queue.due(u64::MAX - 1, 8, &mut taken), "empty: never due");
        for at in [100, 200, 300] {
            queue.push(at, Arc::clone(&pool));
        }
        assert!(!queue.due(99, 8, &mut taken));
        assert!(taken.is_empty());
        assert!(queue.due(250, 1, &mut taken), "a bite of one leaves 200 due");
        assert_eq!(taken.len(), 1);
        assert!(!queue.due(250, 8, &mut taken), "200 taken, 300 not due");
        assert_eq!(taken.len(), 2);
        assert!(!queue.due(299, 8, &mut taken));
        assert!(!queue.due(300, 8, &mut taken));
        assert_eq!(taken.len(), 3, "drained");
        // Emptied, then filled again: due at the new first deadline, not never.
        queue.push(50, Arc::clone(&pool));
        assert!(!queue.due(49, 8, &mut taken));
        assert!(!queue.due(50, 8, &mut taken));
        assert_eq!(taken.len(), 4);
    }

    /// A flood of creates that all expired leaves tables with room for the
    /// flood: trimmed, they give it back, and the store goes on as before. A
    /// store still holding its sessions is left alone.
    #[tokio::test]
    async fn a_trim_gives_back_the_room_a_flood_left_and_only_that() {
        let store = MemoryStore::new(timings());
        let flood = roster::TRIM_FLOOR * 2;
        for i in 0..flood {
            let granted = store.admit(&key(&format!("c{i}")), new(), ONE, 0).await.unwrap();
            assert!(granted.is_ok());
        }
        assert_eq!(store.trim(), 0, "a full store keeps its room");
        let room = |store: &MemoryStore| {
            store.pools.capacity() + store.customers.capacity() + store.roster.capacity() + store.pending.capacity()
        };
        let flooded = room(&store);

        // All of them expire unattended, but a few customers who come back.
        let later = 60_000;
        assert_eq!(store.reap(later).await.unwrap().len(), flood);
        for i in 0..100 {
            store
                .admit(&key(&format!("back{i}")), new(), ONE, later)
                .await
                .unwrap()
                .unwrap();
        }
        // (A table's capacity counts its free room, which removals move a little.)
        assert!(room(&store) * 10 > flooded * 9, "reaping alone gives nothing back");
        assert_eq!(store.trim(), 4, "the pools, customers, index and pending queue");
        assert!(room(&store) * 100 < flooded, "{} of {flooded}", room(&store));
        assert_eq!(store.trim(), 0, "nothing left to give back");

        // The store works as before: limits, look-ups, expiry.
        let back = key("back7");
        assert!(
            store.admit(&back, new(), ONE, later).await.unwrap().is_err(),
            "still full"
        );
        let id = store.list(&back, later).await.unwrap()[0].id;
        assert_eq!(store.locate(id).await.unwrap(), Some(back.clone()));
        assert_eq!(store.reap(later + 60_000).await.unwrap().len(), 100);
    }

    #[tokio::test]
    async fn attaching_hands_the_socket_the_stores_own_copy_of_the_pool_key() {
        let store = MemoryStore::new(timings());
        let admitted = key("a");
        let id = store
            .admit(&admitted, new(), limits(1), 0)
            .await
            .unwrap()
            .unwrap()
            .session
            .id;
        // The socket's key is read from its token: equal, but a copy of its own.
        let from_token = key("a");
        let attached = store.attach(&from_token, id, Holder(1), 0).await.unwrap().unwrap();
        let kept = attached.key.expect("the memory store keeps the key");
        assert_eq!(kept, from_token);
        assert!(kept.shares_ids_with(&admitted), "the store's allocation");
        assert!(!kept.shares_ids_with(&from_token));
    }

    #[tokio::test]
    async fn the_sweep_frees_unattended_sessions_when_their_deadline_comes_and_not_before() {
        let store = MemoryStore::new(timings());
        let pending = store
            .admit(&key("a"), new(), limits(1), 0)
            .await
            .unwrap()
            .unwrap()
            .session
            .id;
        let detached = store
            .admit(&key("b"), new(), limits(1), 0)
            .await
            .unwrap()
            .unwrap()
            .session
            .id;
        store.attach(&key("b"), detached, Holder(1), 0).await.unwrap().unwrap();
        store.detach(&key("b"), detached, Holder(1), 500).await.unwrap();
        assert!(store.reap(3_499).await.unwrap().is_empty());
        let reaped = store.reap(3_500).await.unwrap();
        assert_eq!(reaped.iter().map(|(_, s)| s.id).collect::<Vec<_>>(), vec![detached]);
        let reaped = store.reap(4_000).await.unwrap();
        assert_eq!(reaped.iter().map(|(_, s)| s.id).collect::<Vec<_>>(), vec![pending]);
        assert_eq!(store.by_state().known(), 0);
        assert!(store.pools.is_empty(), "empty pools are dropped");
    }

    #[tokio::test]
    async fn a_sweep_in_bites_still_reaps_every_dead_session_once() {
        let (store, journal) = journaled();
        let mut granted = Vec::new();
        for i in 0..300 {
            let id = store
                .admit(&key(&format!("bite{i}")), new(), limits(1), 0)
                .await
                .unwrap()
                .unwrap()
                .session
                .id;
            granted.push(id);
        }
        // Detached ones are due too, from their own queue: they share the bites.
        let gone = store
            .admit(&key("gone"), new(), limits(1), 0)
            .await
            .unwrap()
            .unwrap()
            .session
            .id;
        store.attach(&key("gone"), gone, Holder(1), 0).await.unwrap().unwrap();
        store.detach(&key("gone"), gone, Holder(1), 0).await.unwrap();
        granted.push(gone);
        flushed(&journal).await;

        let mut reaped = Vec::new();
        let mut bites = Vec::new();
        loop {
            let bite = store.reap_some(4_000, 128).await.unwrap();
            bites.push(bite.dead.len());
            reaped.extend(bite.dead.into_iter().map(|(_, s)| s.id));
            if !bite.more {
                break;
            }
        }
        assert_eq!(bites, vec![128, 128, 45], "no bite visits more pools than asked");
        assert_eq!(sorted(reaped), sorted(granted.clone()), "each dead session once");
        assert_eq!(store.by_state().known(), 0);
        assert!(store.pools.is_empty() && store.customers.len() == 0);
        assert_eq!(flushed(&journal).await, (vec![], sorted(granted)));
        let after = store.reap_some(4_000, 128).await.unwrap();
        assert!(after.dead.is_empty() && !after.more, "nothing left");
    }

    #[tokio::test]
    async fn a_session_that_went_live_is_left_alone_by_the_sweep() {
        let store = MemoryStore::new(timings());
        let id = store
            .admit(&key("c"), new(), limits(1), 0)
            .await
            .unwrap()
            .unwrap()
            .session
            .id;
        store.attach(&key("c"), id, Holder(1), 3_000).await.unwrap().unwrap();
        assert!(store.reap(4_000).await.unwrap().is_empty(), "live until 5 000");
        assert_eq!(store.by_state().known(), 1);
    }

    /// A store with a journal, and what the journal would write.
    fn journaled() -> (MemoryStore, Arc<Journal>) {
        let journal = Arc::new(Journal::new());
        (MemoryStore::with_journal(timings(), Arc::clone(&journal)), journal)
    }

    /// Flushes the journal and returns the ids it put and deleted, sorted.
    async fn flushed(journal: &Journal) -> (Vec<SessionId>, Vec<SessionId>) {
        let db = Recorder::default();
        journal.flush(&db).await.unwrap();
        let batch = db.last();
        let mut put: Vec<_> = batch.put.iter().map(|(_, s)| s.id).collect();
        let mut delete: Vec<_> = batch.delete.iter().map(|ended| ended.id).collect();
        put.sort();
        delete.sort();
        (put, delete)
    }

    fn sorted(mut ids: Vec<SessionId>) -> Vec<SessionId> {
        ids.sort();
        ids
    }

    #[tokio::test]
    async fn the_count_and_the_index_follow_admissions_takeovers_and_ends() {
        let (store, journal) = journaled();
        let p = key("d");
        let a = store.admit(&p, new(), limits(2), 0).await.unwrap().unwrap().session.id;
        let b = store.admit(&p, new(), limits(2), 0).await.unwrap().unwrap().session.id;
        assert!(store.admit(&p, new(), limits(2), 0).await.unwrap().is_err());
        assert_eq!(store.by_state().known(), 2);
        assert_eq!(flushed(&journal).await, (sorted(vec![a, b]), vec![]));

        let c = store
            .take_over(&p, a, new(), 1)
            .await
            .unwrap()
            .unwrap()
            .granted
            .session
            .id;
        assert_eq!(store.by_state().known(), 2);
        assert_eq!(store.locate(a).await.unwrap(), None, "the victim is gone");
        assert_eq!(store.locate(c).await.unwrap(), Some(p.clone()));
        assert_eq!(flushed(&journal).await, (vec![c], vec![a]));

        store.end(&p, b, None, 2).await.unwrap().unwrap();
        store.end(&p, c, None, 2).await.unwrap().unwrap();
        assert_eq!(store.by_state().known(), 0);
        assert_eq!(store.locate(b).await.unwrap(), None);
        assert_eq!(flushed(&journal).await, (vec![], sorted(vec![b, c])));
        assert!(store.pools.is_empty());
    }

    #[tokio::test]
    async fn sessions_an_operation_finds_dead_leave_the_count_the_index_and_the_journal() {
        let (store, journal) = journaled();
        let p = key("e");
        // Pending until 4 000 (connect timeout), never connected.
        let pending = store.admit(&p, new(), limits(2), 0).await.unwrap().unwrap().session.id;
        let live = store.admit(&p, new(), limits(2), 0).await.unwrap().unwrap().session.id;
        store.attach(&p, live, Holder(1), 3_000).await.unwrap().unwrap();
        flushed(&journal).await;
        // A PONG of the other session is the first operation on the pool after the
        // pending one died: it drops it, and no sweep is needed to notice.
        assert_eq!(
            store.heartbeat(&p, live, Holder(1), 4_000).await.unwrap(),
            Heartbeat::Written
        );
        assert_eq!(store.by_state().known(), 1);
        assert_eq!(store.locate(pending).await.unwrap(), None);
        assert_eq!(flushed(&journal).await, (vec![], vec![pending]));
        // Granted and found dead within one interval: nothing to write.
        let short = store
            .admit(&p, new(), limits(2), 5_000)
            .await
            .unwrap()
            .unwrap()
            .session
            .id;
        // By 9 000 the live one missed its PONG and the new one never connected.
        assert_eq!(store.list(&p, 9_000).await.unwrap().len(), 0);
        assert_eq!(store.locate(short).await.unwrap(), None);
        assert_eq!(flushed(&journal).await, (vec![], vec![live]));
        assert_eq!(store.by_state().known(), 0);
    }

    /// A start restores every pool of the last run at once: each must be sized as
    /// an admission sizes it (a vector of four sessions is 240 bytes of room per
    /// pool, a third more memory per session at a million of them), and a pool's
    /// sessions must share its one key.
    #[tokio::test]
    async fn restored_pools_hold_no_spare_room_and_share_one_key() {
        let store = MemoryStore::new(timings());
        let saved = |customer: &str, created_at: Millis| {
            let session = Session {
                id: SessionId::random(),
                name: "tv".into(),
                state: SessionState::Detached,
                expires_at: 7_000,
                holder: None,
                created_at,
            };
            (key(customer), session)
        };
        let (two, one) = (key("two"), key("one"));
        // Out of creation order, as an archive may give them.
        let sessions = vec![saved("two", 20), saved("one", 5), saved("two", 10)];
        let order: Vec<_> = [2, 0].iter().map(|&i| sessions[i].1.id).collect();
        store.restore(sessions).await.unwrap();

        let pool = store.pools.get(&two).unwrap();
        let ids: Vec<_> = pool.sessions.iter().map(|s| s.id).collect();
        assert_eq!(ids, order, "in creation order");
        assert_eq!(pool.sessions.capacity(), 2, "no room beyond its sessions");
        assert_eq!(store.pools.get(&one).unwrap().sessions.capacity(), 1);
        // The pool map, the customer map's key and list, the session index (twice)
        // and the expiry queue (twice) hold the pool's key: one key for the pool.
        assert_eq!(Arc::strong_count(pool.key()), 7);
        drop(pool);
        for customer_id in ["two", "one"] {
            let customer = Customer {
                publisher_id: "p".into(),
                customer_id: customer_id.into(),
            };
            let open = store.customers.pools_of(&customer);
            assert_eq!((open.len(), open.capacity()), (1, 1), "one pool, room for one");
        }
    }

    #[tokio::test]
    async fn reaped_restored_and_handed_over_sessions_are_counted_and_journaled() {
        let (store, journal) = journaled();
        let p = key("f");
        let reaped = store.admit(&p, new(), limits(3), 0).await.unwrap().unwrap().session.id;
        flushed(&journal).await;
        assert_eq!(store.reap(4_000).await.unwrap().len(), 1);
        assert_eq!(flushed(&journal).await, (vec![], vec![reaped]));

        let restored = Session {
            id: SessionId::random(),
            name: "tv".into(),
            state: SessionState::Detached,
            expires_at: 7_000,
            holder: None,
            created_at: 0,
        };
        store.restore(vec![(p.clone(), restored.clone())]).await.unwrap();
        assert_eq!(store.by_state().known(), 1);
        assert_eq!(store.locate(restored.id).await.unwrap(), Some(p.clone()));
        // Its row is in the journal it came from: nothing to write again.
        assert_eq!(flushed(&journal).await, (vec![], vec![]));

        // Dead by the shutdown: dropped, so the next start does not bring it back.
        store.hand_over(7_000).await.unwrap();
        assert_eq!(store.by_state().known(), 0);
        assert_eq!(store.locate(restored.id).await.unwrap(), None);
        assert_eq!(flushed(&journal).await, (vec![], vec![restored.id]));
        assert!(store.pools.is_empty());
    }

    /// Remembers the causes it is told.
    #[derive(Default)]
    struct Causes(std::sync::Mutex<Vec<(SessionId, EndCause)>>);

    impl SessionEvents for Causes {
        fn ended(&self, _: &PoolKey, id: SessionId, cause: EndCause) {
            self.0.lock().unwrap().push((id, cause));
        }
    }

    fn states(store: &MemoryStore) -> (Option<u64>, u64, Option<u64>) {
        let s = store.by_state();
        (s.pending, s.live, s.detached)
    }

    #[tokio::test]
    async fn sessions_are_counted_by_state_and_those_found_dead_are_reported_with_their_cause() {
        let causes = Arc::new(Causes::default());
        let store = MemoryStore::new(timings()).observed(causes.clone());
        let p = key("g");
        let pending = store.admit(&p, new(), limits(3), 0).await.unwrap().unwrap().session.id;
        let live = store.admit(&p, new(), limits(3), 0).await.unwrap().unwrap().session.id;
        let detached = store.admit(&p, new(), limits(3), 0).await.unwrap().unwrap().session.id;
        assert_eq!(states(&store), (Some(3), 0, Some(0)));
        store.attach(&p, live, Holder(1), 0).await.unwrap().unwrap();
        store.attach(&p, detached, Holder(2), 0).await.unwrap().unwrap();
        store.detach(&p, detached, Holder(2), 0).await.unwrap();
        assert_eq!(states(&store), (Some(1), 1, Some(1)));
        // By 4 000: the live one missed its PONG (2 000), the detached one its grace
        // (3 000), the pending one its connect timeout (4 000). A listing finds them.
        assert!(store.list(&p, 4_000).await.unwrap().is_empty());
        assert_eq!(states(&store), (Some(0), 0, Some(0)));
        let mut told = causes.0.lock().unwrap().clone();
        told.sort();
        let mut want = vec![
            (pending, EndCause::ConnectTimeout),
            (live, EndCause::PongTimeout),
            (detached, EndCause::GraceExpired),
        ];
        want.sort();
        assert_eq!(told, want);
        // Ended by someone: the caller reports it, not the store.
        let ended = store
            .admit(&p, new(), limits(3), 5_000)
            .await
            .unwrap()
            .unwrap()
            .session
            .id;
        store.end(&p, ended, None, 5_000).await.unwrap().unwrap();
        assert_eq!(causes.0.lock().unwrap().len(), 3);
        assert_eq!(states(&store), (Some(0), 0, Some(0)));
    }

    #[tokio::test]
    async fn a_customer_at_the_pool_cap_opens_a_pool_once_another_has_died() {
        let store = MemoryStore::new(timings());
        let offer = |o: &str| key("d").with_offer(o);
        store.admit(&offer("1"), new(), ONE, 0).await.unwrap().unwrap();
        store.admit(&offer("2"), new(), ONE, 1_000).await.unwrap().unwrap();
        let refused = store.admit(&offer("3"), new(), ONE, 1_000).await.unwrap();
        assert!(matches!(refused, Err(Refusal::TooManyPools)));
        // Offer 1's session died unattended at 4 000; no sweep ran.
        store.admit(&offer("3"), new(), ONE, 4_000).await.unwrap().unwrap();
        assert!(store.pools.get(&offer("1")).is_none(), "the dead pool was dropped");
        assert_eq!(store.customers.len(), 1);
    }
}
