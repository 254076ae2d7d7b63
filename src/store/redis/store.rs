//! The session store on Redis: runs the scripts ([`super::scripts`]) on the keys
//! of [`super::keys`] and reads their replies with [`super::record`].
//!
//! What a node's own sockets do is batched: a PONG costs Redis nothing (the
//! node's liveness key vouches for its sessions, and each is checked once a
//! [`CHECK_EVERY_MS`]), and an end or detach by the socket that holds the
//! session is queued for the next refresh round ([`super::refresh`]), at most one
//! refresh interval away. Any operation on a pool by this node (an admission
//! first of all) writes that pool's queued ends first, in the same round trip, so
//! a player who finished here and creates again here never finds the old
//! session still counted; another node sees the slot free within one refresh
//! interval.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use redis::Value;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::keys;
use super::record::{self, AdmitReply, AttachReply, TakeOverReply};
use super::scripts::{Scripts, on_pool};
use crate::domain::clock::duration_ms;
use crate::domain::listing::{SessionPage, SessionQuery};
use crate::domain::pool::{ActiveSession, Attached, Granted, LimitExceeded, Limits, NewSession, Refusal, TakenOver};
use crate::domain::ports::{Heartbeat, Notifier, SessionStore, SessionsByState, StoreError};
use crate::domain::{Customer, Holder, Millis, PoolKey, Session, SessionId, SessionState, Timings};
use crate::readiness::Probe;

/// How many script calls go in one pipeline when a node acts on all its sessions.
pub(super) const PIPELINE_CHUNK: usize = 1000;

/// How often each held session is checked in Redis (once a minute, from its
/// first PONG): the backstop that tells a socket its session ended or moved
/// should the order have been lost, and what keeps its record's own deadline
/// fresh. In the caller's milliseconds when tests drive time.
pub const CHECK_EVERY_MS: Millis = 60_000;

/// A write a socket's end left for the next refresh round (or for the next
/// operation on its pool, whichever comes first).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Queued {
    /// FINISHED, or no PONG in time: the session ends if this socket holds it.
    End { id: SessionId, holder: Holder, now: Millis },
    /// The socket closed: the session waits the reconnect grace.
    Detach { id: SessionId, holder: Holder, now: Millis },
}

pub(crate) fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// A session this node's socket holds: what is needed to refresh it, and to put
/// it back if Redis loses its data.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub pool: PoolKey,
    pub id: SessionId,
    pub name: String,
    pub created_at: Millis,
    /// When its record was last checked (`None`: not yet; the first PONG does).
    pub checked_at: Option<Millis>,
}

/// How the scripts read the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSource {
    /// Redis's own `TIME`: the only choice for a cluster.
    Redis,
    /// The caller's `now` (tests drive time through it).
    Caller,
}

pub struct RedisStore {
    pub(super) conn: ConnectionManager,
    pub(super) scripts: Scripts,
    pub(super) timings: Timings,
    pub(super) time: TimeSource,
    index_ttl: Duration,
    /// This node's id, whose liveness key the refresh rounds write (`None` in
    /// tests: the node of each socket heard).
    pub(super) node: Option<u64>,
    /// Sockets of this node and the sessions they hold.
    pub(super) held: DashMap<Holder, Held>,
    /// PONGs waiting for the next refresh, with the time they were heard.
    pub(super) pending: Mutex<HashMap<Holder, (SessionId, Millis)>>,
    /// Ends and detaches waiting for the next refresh, by pool.
    pub(super) queued: Mutex<HashMap<PoolKey, Vec<Queued>>>,
    pub(super) local: Arc<dyn Notifier>,
    /// The last value of the epoch key this node saw (see [`super::refresh`]).
    pub(super) epoch: Mutex<Option<String>>,
    /// When this node last vouched for its sessions, and whether it must re-assert
    /// them (see [`super::refresh`]).
    pub(super) vouching: Mutex<super::refresh::Vouching>,
}

impl RedisStore {
    /// Connects to Redis. `local` reaches this node's sockets; `index_ttl` is how
    /// long a session id stays findable by operators (the session token's lifetime).
    pub async fn connect(
        url: &str,
        timings: Timings,
        tombstone_ttl: Duration,
        index_ttl: Duration,
        time: TimeSource,
        local: Arc<dyn Notifier>,
    ) -> Result<Self, StoreError> {
        let target = redis::IntoConnectionInfo::into_connection_info(url).map_err(unavailable)?;
        Self::connect_to(target, timings, tombstone_ttl, index_ttl, time, local).await
    }

    /// As [`Self::connect`], to a target already parsed (a `rediss://` one carries
    /// its certificates: see [`super::tls`]).
    pub async fn connect_to(
        url: redis::ConnectionInfo,
        timings: Timings,
        tombstone_ttl: Duration,
        index_ttl: Duration,
        time: TimeSource,
        local: Arc<dyn Notifier>,
    ) -> Result<Self, StoreError> {
        let mut conn = Self::connection(url).await?;
        let scripts = Scripts::new(
            duration_ms(timings.connect_timeout),
            duration_ms(timings.pong_timeout),
            duration_ms(timings.reconnect_grace),
            duration_ms(tombstone_ttl),
        );
        // Loaded up front, so the pipelines (which do not fall back to EVAL) find them.
        for script in scripts.all() {
            script
                .prepare_invoke()
                .load_async(&mut conn)
                .await
                .map_err(unavailable)?;
        }
        Ok(Self {
            conn,
            scripts,
            timings,
            time,
            index_ttl,
            node: None,
            held: DashMap::new(),
            pending: Mutex::new(HashMap::new()),
            queued: Mutex::new(HashMap::new()),
            local,
            epoch: Mutex::new(None),
            vouching: Mutex::new(super::refresh::Vouching::default()),
        })
    }

    /// The store of node `node`: its refresh rounds vouch for that node's sockets.
    pub fn for_node(mut self, node: u64) -> Self {
        self.node = Some(node);
        self
    }

    /// A self-reconnecting connection that gives up on a request quickly, so a
    /// Redis outage turns into clear errors rather than hung players.
    pub(crate) async fn connection(url: impl redis::IntoConnectionInfo) -> Result<ConnectionManager, StoreError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        ConnectionManager::new_with_config(client, config)
            .await
            .map_err(unavailable)
    }

    pub(super) fn now_arg(&self, now: Millis) -> u64 {
        match self.time {
            TimeSource::Redis => 0,
            TimeSource::Caller => now,
        }
    }

    /// Runs a script, once more if the connection had dropped (the manager
    /// reconnects by itself, but does not replay the request that found it dead).
    /// A replayed script cannot break a limit: each one re-checks the pool.
    async fn run(&self, invocation: &redis::ScriptInvocation<'_>) -> Result<Value, StoreError> {
        let mut conn = self.conn.clone();
        match invocation.invoke_async(&mut conn).await {
            Err(e) if e.is_connection_dropped() || e.is_io_error() => {
                invocation.invoke_async(&mut conn).await.map_err(unavailable)
            }
            other => other.map_err(unavailable),
        }
    }

    /// Runs a pipeline of invocations of `script`. Unlike a single invocation, a
    /// pipeline does not reload a flushed script by itself: load it and retry.
    pub(crate) async fn run_pipeline(
        &self,
        script: &redis::Script,
        pipe: &redis::Pipeline,
    ) -> Result<Vec<Value>, StoreError> {
        self.run_pipeline_of(&[script], pipe).await
    }

    /// Runs a pipeline that invokes any of `scripts`, loading them all and
    /// retrying once if Redis had lost one (or the connection dropped).
    pub(crate) async fn run_pipeline_of(
        &self,
        scripts: &[&redis::Script],
        pipe: &redis::Pipeline,
    ) -> Result<Vec<Value>, StoreError> {
        let mut conn = self.conn.clone();
        match pipe.query_async::<Vec<Value>>(&mut conn).await {
            Err(e)
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
                    || e.is_connection_dropped() =>
            {
                for script in scripts {
                    script
                        .prepare_invoke()
                        .load_async(&mut conn)
                        .await
                        .map_err(unavailable)?;
                }
                pipe.query_async(&mut conn).await.map_err(unavailable)
            }
            other => other.map_err(unavailable),
        }
    }

    /// Queues a socket's end or detach for the next refresh round.
    fn queue(&self, pool: &PoolKey, write: Queued) {
        if let Ok(mut queued) = self.queued.lock() {
            queued.entry(pool.clone()).or_default().push(write);
        }
    }

    /// Takes the queued writes of the pools `which` selects.
    pub(super) fn take_queued(&self, which: impl Fn(&PoolKey) -> bool) -> Vec<(PoolKey, Queued)> {
        let Ok(mut queued) = self.queued.lock() else {
            return Vec::new();
        };
        let pools: Vec<PoolKey> = queued.keys().filter(|p| which(p)).cloned().collect();
        pools
            .into_iter()
            .filter_map(|p| queued.remove(&p).map(|writes| (p, writes)))
            .flat_map(|(p, writes)| writes.into_iter().map(move |w| (p.clone(), w)))
            .collect()
    }

    /// Puts back writes a failed round trip did not make, for the next round.
    pub(super) fn requeue(&self, writes: Vec<(PoolKey, Queued)>) {
        if let Ok(mut queued) = self.queued.lock() {
            for (pool, write) in writes {
                queued.entry(pool).or_default().push(write);
            }
        }
    }

    /// Adds a queued write to `pipe`; its reply is not needed (each is
    /// conditional on the socket still holding the session).
    pub(super) fn queued_in(&self, pipe: &mut redis::Pipeline, pool: &PoolKey, write: &Queued) {
        match *write {
            Queued::End { id, holder, now } => pipe.invoke_script(
                on_pool(&self.scripts.end, pool)
                    .key(keys::tombstone(pool, id))
                    .key(keys::session_index(id))
                    .arg(self.now_arg(now))
                    .arg(id.to_string())
                    .arg(record::holder_arg(holder))
                    .arg(""),
            ),
            Queued::Detach { id, holder, now } => pipe.invoke_script(
                on_pool(&self.scripts.detach, pool)
                    .arg(self.now_arg(now))
                    .arg(id.to_string())
                    .arg(record::holder_arg(holder)),
            ),
        };
    }

    /// Writes the queued ends and detaches of the pools `which` selects, a
    /// pipeline per thousand. Returns how many were written.
    pub(super) async fn write_queued(&self, which: impl Fn(&PoolKey) -> bool) -> Result<usize, StoreError> {
        let writes = self.take_queued(which);
        let count = writes.len();
        for (i, chunk) in writes.chunks(PIPELINE_CHUNK).enumerate() {
            let mut pipe = redis::pipe();
            for (pool, write) in chunk {
                self.queued_in(&mut pipe, pool, write);
            }
            if let Err(e) = self
                .run_pipeline_of(&[&self.scripts.end, &self.scripts.detach], &pipe)
                .await
            {
                self.requeue(writes[i * PIPELINE_CHUNK..].to_vec());
                return Err(e);
            }
        }
        Ok(count)
    }

    /// Runs `invocation` on `pool`, after writing the ends and detaches queued
    /// for any pool of its customer: what this node's sockets ended is never
    /// still counted by this node's next operation for that customer (its limit,
    /// its cap on pools). Two round trips only when something was queued there;
    /// not one pipeline, since a pipeline retried after a flushed script cache
    /// would run the operation twice.
    async fn run_on(&self, pool: &PoolKey, invocation: &redis::ScriptInvocation<'_>) -> Result<Value, StoreError> {
        let customer = Customer {
            publisher_id: pool.publisher_id.clone(),
            customer_id: pool.customer_id.clone(),
        };
        self.write_queued(|p| of_customer(p, &customer)).await?;
        self.run(invocation).await
    }

    /// Where operators' look-ups by id find the session, for as long as its
    /// session token lives (the admission and take-over scripts write it too).
    pub(super) fn index_in(&self, pipe: &mut redis::Pipeline, pool: &PoolKey, id: SessionId) {
        pipe.cmd("SET")
            .arg(keys::session_index(id))
            .arg(keys::index_value(pool))
            .arg("PX")
            .arg(duration_ms(self.index_ttl))
            .ignore();
    }

    /// Each id's index key has a slot of its own (a multi-key DEL would cross
    /// slots): one DEL each, pipelined. Only operators' look-ups by id depend on it.
    async fn unindex(&self, ids: impl IntoIterator<Item = SessionId>) {
        let mut pipe = redis::pipe();
        let mut any = false;
        for id in ids {
            pipe.cmd("DEL").arg(keys::session_index(id)).ignore();
            any = true;
        }
        if !any {
            return;
        }
        let mut conn = self.conn.clone();
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            tracing::debug!(error = %e, "could not unindex ended sessions");
        }
    }

    /// The session a script granted at its `now`.
    fn granted(&self, new: NewSession, now: Millis, live: Vec<record::LiveSession>) -> Granted {
        Granted {
            session: Session {
                id: new.id,
                name: new.name,
                state: SessionState::Pending,
                expires_at: self.timings.deadline(SessionState::Pending, now),
                holder: None,
                created_at: now,
            },
            live_others: live.into_iter().map(|h| (h.id, h.holder)).collect(),
        }
    }

    /// The pools `customer` holds sessions in, from the customer's set of pools
    /// (one key in the customer's slot: no SCAN). A pool whose sessions all died
    /// may still be listed until the next admission drops it; its scripts find
    /// it empty.
    async fn pools_of(&self, customer: &Customer, wanted: impl Fn(&str) -> bool) -> Result<Vec<PoolKey>, StoreError> {
        let probe = PoolKey::new(customer, "");
        let mut conn = self.conn.clone();
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(keys::pools(&probe))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(members
            .iter()
            .filter(|offer| wanted(offer))
            .map(|offer| PoolKey::new(customer, offer))
            .collect())
    }

    /// Runs `script` once on each pool, pipelined, and returns each reply's
    /// records paired with their pool.
    async fn on_each_pool(
        &self,
        script: &redis::Script,
        what: &str,
        pools: Vec<PoolKey>,
        args: impl Fn(&PoolKey, &mut redis::ScriptInvocation<'_>),
    ) -> Result<Vec<(PoolKey, Session)>, StoreError> {
        let mut found = Vec::new();
        for chunk in pools.chunks(PIPELINE_CHUNK) {
            let mut pipe = redis::pipe();
            for pool in chunk {
                let mut invocation = on_pool(script, pool);
                args(pool, &mut invocation);
                pipe.invoke_script(&invocation);
            }
            let replies = self.run_pipeline(script, &pipe).await?;
            for (pool, reply) in chunk.iter().zip(replies) {
                found.extend(record::sessions(reply, what)?.into_iter().map(|s| (pool.clone(), s)));
            }
        }
        Ok(found)
    }

    /// Registers that this node's socket `holder` holds a session.
    fn hold(&self, holder: Holder, pool: &PoolKey, id: SessionId, name: String, created_at: Millis) {
        self.held.insert(
            holder,
            Held {
                pool: pool.clone(),
                id,
                name,
                created_at,
                checked_at: None,
            },
        );
    }

    /// What this node knows of the session its socket `holder` holds, if it is `id`.
    fn holding(&self, holder: Holder, id: SessionId) -> Option<Held> {
        self.held.get(&holder).filter(|h| h.id == id).map(|h| h.clone())
    }

    pub(crate) fn release(&self, holder: Holder) {
        self.held.remove(&holder);
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(&holder);
        }
    }

    /// The end script, leaving `tombstone` ("" for none) for the holder's next check.
    async fn end_with(
        &self,
        pool: &PoolKey,
        id: SessionId,
        holder: Option<Holder>,
        tombstone: &str,
        now: Millis,
    ) -> Result<Option<Session>, StoreError> {
        let reply = self
            .run_on(
                pool,
                on_pool(&self.scripts.end, pool)
                    .key(keys::tombstone(pool, id))
                    .key(keys::session_index(id))
                    .arg(self.now_arg(now))
                    .arg(id.to_string())
                    .arg(holder.map(record::holder_arg).unwrap_or_default())
                    .arg(tombstone),
            )
            .await?;
        record::session_or_nil(&reply, "end")
    }
}

fn of_customer(pool: &PoolKey, customer: &Customer) -> bool {
    pool.publisher_id == customer.publisher_id && pool.customer_id == customer.customer_id
}

/// `PING` on the connection every session operation uses: if it does not answer,
/// neither would an admission.
#[async_trait]
impl Probe for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn check(&self) -> Result<(), String> {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| e.to_string())
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn admit(
        &self,
        pool: &PoolKey,
        new: NewSession,
        limits: Limits,
        now: Millis,
    ) -> Result<Result<Granted, Refusal>, StoreError> {
        self.admitting()?;
        // Twice at most: a first "lost" reply makes this node put its sessions back
        // (and learn the new epoch), so they count before anyone is admitted beside them.
        for _ in 0..2 {
            let epoch = self.known_epoch();
            let reply = self
                .run_on(
                    pool,
                    on_pool(&self.scripts.admit, pool)
                        .key(keys::session_index(new.id))
                        .arg(self.now_arg(now))
                        .arg(new.id.to_string())
                        .arg(&new.name)
                        .arg(limits.sessions)
                        .arg(limits.pools_per_customer)
                        .arg(keys::index_value(pool))
                        .arg(duration_ms(self.index_ttl))
                        .arg(epoch)
                        .arg(limits.customer_sessions.map(|c| c.to_string()).unwrap_or_default()),
                )
                .await?;
            return match record::reply(&reply, "admit")? {
                AdmitReply::Granted { now, live } => Ok(Ok(self.granted(new, now, live))),
                AdmitReply::TooManyPools => Ok(Err(Refusal::TooManyPools)),
                AdmitReply::Full { held } => Ok(Err(Refusal::Full(LimitExceeded {
                    active: held
                        .into_iter()
                        .map(|s| ActiveSession { id: s.id, name: s.name })
                        .collect(),
                }))),
                AdmitReply::Household { held } => Ok(Err(Refusal::Household(LimitExceeded {
                    active: held
                        .into_iter()
                        .map(|s| ActiveSession { id: s.id, name: s.name })
                        .collect(),
                }))),
                AdmitReply::Lost => {
                    self.restore_if_lost().await?;
                    continue;
                }
            };
        }
        Err(StoreError::Unavailable(
            "Redis changed its data epoch twice during one admission".into(),
        ))
    }

    async fn take_over(
        &self,
        pool: &PoolKey,
        victim: SessionId,
        new: NewSession,
        now: Millis,
    ) -> Result<Option<TakenOver>, StoreError> {
        self.admitting()?;
        let reply = self
            .run_on(
                pool,
                on_pool(&self.scripts.take_over, pool)
                    .key(keys::tombstone(pool, victim))
                    .key(keys::session_index(victim))
                    .key(keys::session_index(new.id))
                    .arg(self.now_arg(now))
                    .arg(victim.to_string())
                    .arg(new.id.to_string())
                    .arg(&new.name)
                    .arg(keys::index_value(pool))
                    .arg(duration_ms(self.index_ttl)),
            )
            .await?;
        let TakeOverReply::Taken {
            now,
            victim: victim_session,
            live,
        } = record::reply(&reply, "take_over")?
        else {
            return Ok(None);
        };
        Ok(Some(TakenOver {
            victim: victim_session,
            granted: self.granted(new, now, live),
        }))
    }

    async fn attach(
        &self,
        pool: &PoolKey,
        id: SessionId,
        holder: Holder,
        now: Millis,
    ) -> Result<Option<Attached>, StoreError> {
        let reply = self
            .run_on(
                pool,
                on_pool(&self.scripts.attach, pool)
                    .arg(self.now_arg(now))
                    .arg(id.to_string())
                    .arg(record::holder_arg(holder)),
            )
            .await?;
        let AttachReply::Attached {
            previous,
            name,
            created_at,
        } = record::reply(&reply, "attach")?
        else {
            return Ok(None);
        };
        // A socket of this node that held it before holds nothing now: its end
        // or close must not be queued as if it did.
        if let Some(previous) = previous
            && self.holding(previous, id).is_some()
        {
            self.release(previous);
        }
        self.hold(holder, pool, id, name, created_at);
        Ok(Some(Attached { previous }))
    }

    /// Queued: the node vouches for its live sessions as a whole, and the next
    /// refresh round checks this one in Redis if it is due (its first PONG, then
    /// once a [`CHECK_EVERY_MS`]), telling the socket if its session turns out to
    /// be gone. A PONG from a socket this node no longer knows as a holder (its
    /// session ended or moved) is not held.
    async fn heartbeat(
        &self,
        _pool: &PoolKey,
        id: SessionId,
        holder: Holder,
        now: Millis,
    ) -> Result<Heartbeat, StoreError> {
        if self.held.get(&holder).is_none_or(|h| h.id != id) {
            return Ok(Heartbeat::NotHeld);
        }
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(holder, (id, now));
        }
        Ok(Heartbeat::Queued)
    }

    /// Queued when this node's socket holds the session (written within one
    /// refresh interval: until then the session counts as live, which it would
    /// detached too); otherwise asked of Redis at once.
    async fn detach(&self, pool: &PoolKey, id: SessionId, holder: Holder, now: Millis) -> Result<bool, StoreError> {
        if self.holding(holder, id).is_some() {
            self.release(holder);
            self.queue(pool, Queued::Detach { id, holder, now });
            return Ok(true);
        }
        self.release(holder);
        let reply = self
            .run_on(
                pool,
                on_pool(&self.scripts.detach, pool)
                    .arg(self.now_arg(now))
                    .arg(id.to_string())
                    .arg(record::holder_arg(holder)),
            )
            .await?;
        Ok(record::int(&reply, "detach")? == 1)
    }

    /// Ended by the socket that holds it: queued, and answered from what this
    /// node knows of the session. The slot is free for this node's next
    /// operation on the pool at once (it writes the queued end first, in the same
    /// round trip) and for every node within one refresh interval. Ended by
    /// anyone else (an operator): at once.
    async fn end(
        &self,
        pool: &PoolKey,
        id: SessionId,
        holder: Option<Holder>,
        now: Millis,
    ) -> Result<Option<Session>, StoreError> {
        if let Some(h) = holder {
            if let Some(held) = self.holding(h, id) {
                self.release(h);
                self.queue(pool, Queued::End { id, holder: h, now });
                return Ok(Some(Session {
                    id,
                    name: held.name,
                    state: SessionState::Live,
                    expires_at: now,
                    holder: Some(h),
                    created_at: held.created_at,
                }));
            }
            self.release(h);
        }
        // Ended by someone else than its socket (an operator): leave a tombstone
        // so the holder's next check learns why, should the order be lost.
        let tombstone = if holder.is_none() { "E" } else { "" };
        self.end_with(pool, id, holder, tombstone, now).await
    }

    /// The tombstone says "taken over by `session_name`", as a takeover's does.
    async fn end_taken_over(
        &self,
        pool: &PoolKey,
        id: SessionId,
        session_name: &str,
        now: Millis,
    ) -> Result<Option<Session>, StoreError> {
        self.end_with(pool, id, None, &format!("T{session_name}"), now).await
    }

    async fn list(&self, pool: &PoolKey, now: Millis) -> Result<Vec<Session>, StoreError> {
        let reply = self
            .run_on(pool, on_pool(&self.scripts.list, pool).arg(self.now_arg(now)))
            .await?;
        record::sessions(reply, "list")
    }

    async fn customer_sessions(&self, query: &SessionQuery, now: Millis) -> Result<SessionPage, StoreError> {
        self.write_queued(|p| of_customer(p, &query.customer)).await?;
        let pools = self.pools_of(&query.customer, |offer| query.wants_pool(offer)).await?;
        let now = self.now_arg(now);
        let found = self
            .on_each_pool(&self.scripts.list, "list", pools, |_, invocation| {
                invocation.arg(now);
            })
            .await?;
        Ok(query.page(found))
    }

    async fn end_customer(
        &self,
        customer: &Customer,
        offer_id: Option<&str>,
        now: Millis,
    ) -> Result<Vec<(PoolKey, Session)>, StoreError> {
        self.write_queued(|p| of_customer(p, customer)).await?;
        let pools = self
            .pools_of(customer, |offer| offer_id.is_none_or(|only| only == offer))
            .await?;
        let now = self.now_arg(now);
        let ended = self
            .on_each_pool(&self.scripts.end_all, "end_all", pools, |pool, invocation| {
                invocation.arg(now).arg(keys::tombstone_prefix(pool));
            })
            .await?;
        self.unindex(ended.iter().map(|(_, s)| s.id)).await;
        Ok(ended)
    }

    async fn locate(&self, id: SessionId) -> Result<Option<PoolKey>, StoreError> {
        let mut conn = self.conn.clone();
        let value: Option<String> = redis::cmd("GET")
            .arg(keys::session_index(id))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        value
            .map(|v| keys::parse_index_value(&v).ok_or_else(|| record::unreadable("session index", v)))
            .transpose()
    }

    /// Pipelined, a thousand at a time: a node may hold tens of thousands.
    async fn restore(&self, sessions: Vec<(PoolKey, Session)>) -> Result<(), StoreError> {
        for chunk in sessions.chunks(PIPELINE_CHUNK) {
            let mut pipe = redis::pipe();
            for (pool, s) in chunk {
                pipe.invoke_script(
                    on_pool(&self.scripts.restore, pool)
                        .arg(0)
                        .arg(s.id.to_string())
                        .arg(record::encode(s)),
                );
                self.index_in(&mut pipe, pool, s.id);
            }
            self.run_pipeline(&self.scripts.restore, &pipe).await?;
        }
        Ok(())
    }

    /// The sessions bound to this node's sockets, as live: pending and detached
    /// sessions are in Redis, held by no node, and counting them would be a scan.
    fn by_state(&self) -> SessionsByState {
        SessionsByState {
            pending: None,
            live: self.held.len() as u64,
            detached: None,
        }
    }

    /// Detaches every session this node's sockets held, so the players get the
    /// reconnect grace to come back (to any node). Redis drops dead sessions by
    /// itself.
    async fn hand_over(&self, now: Millis) -> Result<(), StoreError> {
        self.write_queued(|_| true).await?;
        let held: Vec<(Holder, Held)> = self.held.iter().map(|e| (*e.key(), e.value().clone())).collect();
        for chunk in held.chunks(PIPELINE_CHUNK) {
            let mut pipe = redis::pipe();
            for (holder, h) in chunk {
                self.release(*holder);
                pipe.invoke_script(
                    on_pool(&self.scripts.detach, &h.pool)
                        .arg(self.now_arg(now))
                        .arg(h.id.to_string())
                        .arg(record::holder_arg(*holder)),
                );
            }
            self.run_pipeline(&self.scripts.detach, &pipe).await?;
        }
        Ok(())
    }
}
