//! The admission and lifecycle rules of one pool, as pure functions of the pool's
//! sessions and the current time.
//!
//! Every store applies exactly these rules under its own atomicity (a map lock in
//! memory, a script in Redis), so the rules are tested here once, without sleeping.
//! Each operation first drops the sessions that are dead at `now`: expiry is part of
//! admission, never something that waits for a sweep.

use super::clock::Millis;
use super::liveness::{Timings, is_dead};
use super::session::{Holder, PoolKey, Session, SessionId, SessionState};

/// What a new session starts with.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: SessionId,
    pub name: String,
}

/// An entry of the takeover list shown to the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveSession {
    pub id: SessionId,
    pub name: String,
}

/// A session was granted.
#[derive(Debug, Clone)]
pub struct Granted {
    pub session: Session,
    /// The pool's other live sessions and their sockets, which are sent a PING.
    pub live_others: Vec<(SessionId, Holder)>,
    /// How many sessions the pool held beside the new one (pending and live;
    /// the dead ones gone): a `monitor` pool's grant with as many as its limit
    /// or more is a would-be refusal. For a takeover, how many are left beside
    /// the victim's successor.
    pub others: u32,
}

/// The pool is full: these are the sessions that hold it.
#[derive(Debug, Clone)]
pub struct LimitExceeded {
    pub active: Vec<ActiveSession>,
}

/// Why a store refused a new session.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// The pool is full.
    Full(LimitExceeded),
    /// The pool is empty and the customer already holds sessions in as many pools
    /// as [`Limits::pools_per_customer`] allows: opening one more is refused.
    TooManyPools,
    /// The customer holds as many sessions across all offers as the publisher's
    /// household cap allows (an extension): these are they, whatever their pool.
    Household(LimitExceeded),
}

/// What a new session is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Sessions in the pool: the offer's `sessionLimit`.
    pub sessions: u32,
    /// Pools one customer may hold sessions in at once: the last line against
    /// a customer multiplying its slots with offers of its own making.
    pub pools_per_customer: u32,
    /// Sessions of the customer across all its pools (the publisher's
    /// `customerSessionLimit`); `None`: no cap, and the stores skip the count.
    pub customer_sessions: Option<u32>,
}

impl Limits {
    /// Whether a customer holding `held` sessions across its pools may hold one more.
    pub fn household_has_room(&self, held: usize) -> bool {
        self.customer_sessions.is_none_or(|cap| held < cap as usize)
    }

    /// Whether a customer whose sessions are in `open` pools may open one more.
    pub fn may_open_pool(&self, open: usize) -> bool {
        open < self.pools_per_customer as usize
    }
}

/// The session a takeover replaced, and the one it granted.
#[derive(Debug, Clone)]
pub struct TakenOver {
    pub victim: Session,
    pub granted: Granted,
}

/// A socket sent REQUESTED for a session that is still held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// The socket that held it before, if another one did: it gets TERMINATE.
    pub previous: Option<Holder>,
    /// The store's own copy of the pool's key, where it keeps one in memory. The
    /// socket keeps it in place of the copy it read from its token, so a held
    /// session's ids are in memory once: one allocation less per held session.
    pub key: Option<PoolKey>,
}

/// The sessions of one pool, in creation order (the order of the takeover list).
/// Small by nature (a limit is a handful of devices), so a vector beats any map
/// here in both memory and speed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pool {
    pub sessions: Vec<Session>,
}

impl Pool {
    /// How many of its sessions are pending, live and detached.
    pub fn tally(&self) -> [i64; 3] {
        let mut tally = [0; 3];
        for s in &self.sessions {
            tally[s.state as usize] += 1;
        }
        tally
    }

    /// Removes and returns the sessions that are dead at `now`.
    pub fn prune(&mut self, now: Millis) -> Vec<Session> {
        if self.sessions.iter().all(|s| !is_dead(s.expires_at, now)) {
            return Vec::new();
        }
        // In place: the survivors keep the vector sized for the pool, where a
        // partition into a new one would give them room for four. (A pool holds
        // a handful: removing from the middle costs nothing worth a scan less.)
        let mut dead = Vec::new();
        let mut at = 0;
        while at < self.sessions.len() {
            if is_dead(self.sessions[at].expires_at, now) {
                dead.push(self.sessions.remove(at));
            } else {
                at += 1;
            }
        }
        dead
    }

    /// Puts back a session a start restores, in creation order (the archive may
    /// give them in any order). Grown one at a time, as `insert` grows a pool: a
    /// start puts back every pool of the last run at once.
    pub fn put_back(&mut self, session: Session) {
        let at = self.sessions.partition_point(|s| s.created_at <= session.created_at);
        self.sessions.reserve_exact(1);
        self.sessions.insert(at, session);
    }

    /// Grants `new` if the pool holds fewer than `limit` sessions at `now`.
    pub fn admit(
        &mut self,
        new: NewSession,
        limit: u32,
        now: Millis,
        timings: &Timings,
    ) -> Result<Granted, LimitExceeded> {
        self.prune(now);
        if self.sessions.len() >= limit as usize {
            return Err(LimitExceeded {
                active: self
                    .sessions
                    .iter()
                    .map(|s| ActiveSession {
                        id: s.id,
                        name: s.name.clone(),
                    })
                    .collect(),
            });
        }
        Ok(self.insert(new, now, timings))
    }

    /// Replaces the session `victim` with `new`, whatever the limit: a takeover
    /// swaps one slot for another and never grows the pool. `None` if `victim` is
    /// not a session of this pool that is still alive.
    pub fn take_over(
        &mut self,
        victim: SessionId,
        new: NewSession,
        now: Millis,
        timings: &Timings,
    ) -> Option<TakenOver> {
        self.prune(now);
        let index = self.position(victim)?;
        let victim = self.sessions.remove(index);
        let granted = self.insert(new, now, timings);
        Some(TakenOver { victim, granted })
    }

    /// Binds `holder` to the session `id` and makes it live. `None` if the session
    /// is gone (ended, taken over or dead).
    pub fn attach(&mut self, id: SessionId, holder: Holder, now: Millis, timings: &Timings) -> Option<Attached> {
        self.prune(now);
        let session = self.get_mut(id)?;
        let previous = session.holder.filter(|h| *h != holder);
        session.holder = Some(holder);
        session.state = SessionState::Live;
        session.expires_at = timings.deadline(SessionState::Live, now);
        Some(Attached { previous, key: None })
    }

    /// Records a PONG from `holder`. False if the session is gone or another socket
    /// holds it now, in which case this socket must stop.
    pub fn heartbeat(&mut self, id: SessionId, holder: Holder, now: Millis, timings: &Timings) -> bool {
        self.prune(now);
        match self.get_mut(id) {
            Some(s) if s.holder == Some(holder) => {
                s.expires_at = timings.deadline(SessionState::Live, now);
                true
            }
            _ => false,
        }
    }

    /// The socket `holder` closed without FINISHED: the session waits for a
    /// reconnect. Does nothing if another socket holds the session by now.
    pub fn detach(&mut self, id: SessionId, holder: Holder, now: Millis, timings: &Timings) -> bool {
        self.prune(now);
        match self.get_mut(id) {
            Some(s) if s.holder == Some(holder) => {
                s.holder = None;
                s.state = SessionState::Detached;
                s.expires_at = timings.deadline(SessionState::Detached, now);
                true
            }
            _ => false,
        }
    }

    /// Ends the session `id`, freeing its slot at once. With `holder`, only if that
    /// socket still holds it (a FINISHED from a socket that was replaced ends nothing).
    /// A session already dead at `now` is not there to end.
    pub fn end(&mut self, id: SessionId, holder: Option<Holder>, now: Millis) -> Option<Session> {
        self.prune(now);
        let index = self.position(id)?;
        if holder.is_some() && self.sessions[index].holder != holder {
            return None;
        }
        Some(self.sessions.remove(index))
    }

    pub fn get(&self, id: SessionId) -> Option<&Session> {
        self.sessions.iter().find(|s| s.id == id)
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    fn get_mut(&mut self, id: SessionId) -> Option<&mut Session> {
        self.sessions.iter_mut().find(|s| s.id == id)
    }

    fn position(&self, id: SessionId) -> Option<usize> {
        self.sessions.iter().position(|s| s.id == id)
    }

    fn insert(&mut self, new: NewSession, now: Millis, timings: &Timings) -> Granted {
        let others = u32::try_from(self.sessions.len()).unwrap_or(u32::MAX);
        let live_others = self
            .sessions
            .iter()
            .filter(|s| s.state == SessionState::Live)
            .filter_map(|s| s.holder.map(|h| (s.id, h)))
            .collect();
        let session = Session {
            id: new.id,
            name: new.name,
            state: SessionState::Pending,
            expires_at: timings.deadline(SessionState::Pending, now),
            holder: None,
            created_at: now,
        };
        // A pool holds one or a few sessions for as long as they live: grown one at a
        // time, not to the four a vector starts with (a session is 80 bytes).
        self.sessions.reserve_exact(1);
        self.sessions.push(session.clone());
        Granted {
            session,
            live_others,
            others,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn timings() -> Timings {
        Timings {
            ping_interval: Duration::from_secs(10),
            pong_timeout: Duration::from_secs(25),
            reconnect_grace: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(40),
        }
    }

    fn new(name: &str) -> NewSession {
        NewSession {
            id: SessionId::random(),
            name: name.into(),
        }
    }

    #[test]
    fn admits_up_to_the_limit_and_lists_the_holders_beyond_it() {
        let mut pool = Pool::default();
        let t = timings();
        let a = pool.admit(new("tv"), 2, 0, &t).unwrap();
        let b = pool.admit(new("phone"), 2, 0, &t).unwrap();
        let refused = pool.admit(new("laptop"), 2, 0, &t).unwrap_err();
        let ids: Vec<_> = refused.active.iter().map(|s| (s.id, s.name.as_str())).collect();
        assert_eq!(ids, vec![(a.session.id, "tv"), (b.session.id, "phone")]);
        assert_eq!(pool.sessions.len(), 2);
    }

    #[test]
    fn a_limit_of_zero_admits_nobody() {
        let mut pool = Pool::default();
        assert!(pool.admit(new("tv"), 0, 0, &timings()).is_err());
    }

    #[test]
    fn a_pending_session_that_never_connects_stops_counting_at_its_connect_timeout() {
        let mut pool = Pool::default();
        let t = timings();
        pool.admit(new("tv"), 1, 0, &t).unwrap();
        assert!(pool.admit(new("phone"), 1, 39_999, &t).is_err());
        assert!(pool.admit(new("phone"), 1, 40_000, &t).is_ok());
    }

    #[test]
    fn a_live_session_without_pong_stops_counting_at_its_pong_timeout() {
        let mut pool = Pool::default();
        let t = timings();
        let a = pool.admit(new("tv"), 1, 0, &t).unwrap().session.id;
        pool.attach(a, Holder(1), 1_000, &t).unwrap();
        assert!(pool.heartbeat(a, Holder(1), 20_000, &t));
        assert!(pool.admit(new("phone"), 1, 44_999, &t).is_err());
        assert!(pool.admit(new("phone"), 1, 45_000, &t).is_ok());
        assert!(
            !pool.heartbeat(a, Holder(1), 45_001, &t),
            "a reaped session takes no PONG"
        );
    }

    #[test]
    fn a_detached_session_is_kept_for_the_reconnect_grace_only() {
        let mut pool = Pool::default();
        let t = timings();
        let a = pool.admit(new("tv"), 1, 0, &t).unwrap().session.id;
        pool.attach(a, Holder(1), 0, &t).unwrap();
        assert!(pool.detach(a, Holder(1), 10_000, &t));
        assert_eq!(pool.get(a).unwrap().state, SessionState::Detached);
        // Reconnecting inside the grace makes it live again.
        assert_eq!(
            pool.attach(a, Holder(2), 39_999, &t),
            Some(Attached {
                previous: None,
                key: None
            })
        );
        assert!(pool.detach(a, Holder(2), 40_000, &t));
        assert!(pool.attach(a, Holder(3), 70_000, &t).is_none(), "grace over");
    }

    #[test]
    fn a_second_socket_takes_the_session_and_names_the_first() {
        let mut pool = Pool::default();
        let t = timings();
        let a = pool.admit(new("tv"), 1, 0, &t).unwrap().session.id;
        assert_eq!(
            pool.attach(a, Holder(1), 0, &t),
            Some(Attached {
                previous: None,
                key: None
            })
        );
        assert_eq!(
            pool.attach(a, Holder(1), 0, &t),
            Some(Attached {
                previous: None,
                key: None
            })
        );
        assert_eq!(
            pool.attach(a, Holder(2), 0, &t),
            Some(Attached {
                previous: Some(Holder(1)),
                key: None
            })
        );
        // The old socket can neither keep the session alive, detach it nor finish it.
        assert!(!pool.heartbeat(a, Holder(1), 1, &t));
        assert!(!pool.detach(a, Holder(1), 1, &t));
        assert!(pool.end(a, Some(Holder(1)), 1).is_none());
        assert_eq!(pool.get(a).unwrap().holder, Some(Holder(2)));
    }

    #[test]
    fn takeover_swaps_one_slot_for_another_even_when_full() {
        let mut pool = Pool::default();
        let t = timings();
        let a = pool.admit(new("tv"), 1, 0, &t).unwrap().session.id;
        pool.attach(a, Holder(7), 0, &t).unwrap();
        let done = pool.take_over(a, new("phone"), 5, &t).unwrap();
        assert_eq!(done.victim.id, a);
        assert_eq!(done.victim.holder, Some(Holder(7)));
        assert_eq!(pool.sessions.len(), 1);
        assert_eq!(pool.sessions[0].name, "phone");
        assert!(pool.take_over(a, new("again"), 6, &t).is_none(), "victim is gone");
    }

    #[test]
    fn a_new_session_pings_only_the_live_sessions() {
        let mut pool = Pool::default();
        let t = timings();
        let a = pool.admit(new("tv"), 3, 0, &t).unwrap().session.id;
        pool.admit(new("pending"), 3, 0, &t).unwrap();
        pool.attach(a, Holder(9), 0, &t).unwrap();
        let granted = pool.admit(new("phone"), 3, 0, &t).unwrap();
        assert_eq!(granted.live_others, vec![(a, Holder(9))]);
    }

    /// A pool is sized to its sessions (a handful for as long as they live):
    /// dropping its dead ones must not give the survivors room for four.
    #[test]
    fn pruning_keeps_the_pool_within_its_room() {
        let t = timings();
        let mut pool = Pool::default();
        for name in ["tv", "phone"] {
            pool.admit(new(name), 2, 0, &t).unwrap();
        }
        assert_eq!(pool.sessions.capacity(), 2);
        pool.sessions[0].expires_at = 1_000;
        assert_eq!(pool.prune(1_000).len(), 1);
        assert_eq!(pool.sessions.len(), 1);
        assert!(pool.sessions.capacity() <= 2, "room for {}", pool.sessions.capacity());
    }

    #[test]
    fn finishing_frees_the_slot_at_once() {
        let mut pool = Pool::default();
        let t = timings();
        let a = pool.admit(new("tv"), 1, 0, &t).unwrap().session.id;
        pool.attach(a, Holder(1), 0, &t).unwrap();
        assert!(pool.end(a, Some(Holder(1)), 1).is_some());
        assert!(pool.admit(new("phone"), 1, 1, &t).is_ok());
    }
}
