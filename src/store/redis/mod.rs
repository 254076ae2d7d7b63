//! The session pools on Redis, for a cluster of drisc nodes.
//!
//! Every operation on a pool is one Lua script ([`scripts`]) on the keys of that
//! pool's customer, all under the customer's hash tag (so a customer's pools share
//! one slot of a Redis Cluster, and a script can count them atomically). PONGs are not written one by one: the node
//! queues them and refreshes its sessions in pipelined batches ([`refresh`]).
//! Orders for sockets held by other nodes travel through per-node inboxes
//! ([`inbox`]).

pub mod inbox;
mod open;
pub mod refresh;
mod scripts;

pub use open::{Cluster, open};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use redis::Value;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Deserialize;

use crate::domain::clock::duration_ms;
use crate::domain::listing::{SessionPage, SessionQuery};
use crate::domain::pool::{ActiveSession, Attached, Granted, LimitExceeded, Limits, NewSession, Refusal, TakenOver};
use crate::domain::ports::{Notifier, SessionStore, SessionsByState, StoreError};
use crate::domain::{Customer, Holder, Millis, PoolKey, Session, SessionId, SessionState, Timings};
use crate::readiness::Probe;
use scripts::Scripts;

/// How many script calls go in one pipeline when a node acts on all its sessions.
const PIPELINE_CHUNK: usize = 1000;

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The hash tag of a customer: each id prefixed by its length, so no two
/// customers share keys whatever characters their ids contain. The offer stays
/// outside the tag: every pool of a customer is in the slot of its set of pools.
fn customer_tag(pool: &PoolKey) -> String {
    let (p, c) = (&pool.publisher_id, &pool.customer_id);
    format!("{}:{p}|{}:{c}", p.len(), c.len())
}

/// The pool's session hash. Everything after the tag's end (fixed by its lengths)
/// is the offer id, so distinct pools never share a key.
pub(crate) fn pool_key(pool: &PoolKey) -> String {
    format!("drisc:{{{}}}:s:{}", customer_tag(pool), pool.offer_id)
}

/// The customer's pools, scored by when their last session expires.
pub(crate) fn pools_key(pool: &PoolKey) -> String {
    format!("drisc:{{{}}}:pools", customer_tag(pool))
}

pub(crate) fn tombstone_key(pool: &PoolKey, id: SessionId) -> String {
    format!("{}{id}", tombstone_prefix(pool))
}

/// What the tombstone keys of a customer's sessions start with.
fn tombstone_prefix(pool: &PoolKey) -> String {
    format!("drisc:{{{}}}:t:", customer_tag(pool))
}

/// An invocation of `script` on `pool`, with the keys every script takes first:
/// the pool's hash and its customer's set of pools.
pub(crate) fn on_pool<'a>(script: &'a redis::Script, pool: &PoolKey) -> redis::ScriptInvocation<'a> {
    let mut invocation = script.prepare_invoke();
    invocation.key(pool_key(pool)).key(pools_key(pool));
    invocation
}

fn index_key(id: SessionId) -> String {
    format!("drisc:sid:{id}")
}

/// A session record as the scripts write it.
#[derive(Deserialize)]
struct Record {
    #[serde(default)]
    id: String,
    s: String,
    e: f64,
    h: String,
    c: f64,
    n: String,
}

impl Record {
    fn into_session(self, id: Option<SessionId>) -> Option<Session> {
        let id = id.or_else(|| SessionId::parse(&self.id))?;
        let state = match self.s.as_str() {
            "p" => SessionState::Pending,
            "l" => SessionState::Live,
            _ => SessionState::Detached,
        };
        Some(Session {
            id,
            name: self.n,
            state,
            expires_at: self.e as Millis,
            holder: self.h.parse().ok().map(Holder),
            created_at: self.c as Millis,
        })
    }
}

fn parse_record(value: &Value) -> Option<Session> {
    let text = as_string(value)?;
    serde_json::from_str::<Record>(&text).ok()?.into_session(None)
}

fn as_int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn as_string(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn bad_reply(what: &str) -> StoreError {
    StoreError::Unavailable(format!("unexpected reply from the {what} script"))
}

/// Pairs `(id, holder)` from a flat reply tail.
fn live_pairs(items: &[Value]) -> Vec<(SessionId, Holder)> {
    items
        .chunks_exact(2)
        .filter_map(|pair| {
            let id = SessionId::parse(&as_string(&pair[0])?)?;
            let holder = as_string(&pair[1])?.parse().ok().map(Holder)?;
            Some((id, holder))
        })
        .collect()
}

/// A session this node's socket holds: what is needed to refresh it, and to put
/// it back if Redis loses its data.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub pool: PoolKey,
    pub id: SessionId,
    pub name: String,
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
    conn: ConnectionManager,
    scripts: Scripts,
    timings: Timings,
    time: TimeSource,
    index_ttl: Duration,
    /// Sockets of this node and the sessions they hold.
    held: DashMap<Holder, Held>,
    /// PONGs waiting for the next refresh, with the time they were heard.
    pending: Mutex<HashMap<Holder, (SessionId, Millis)>>,
    local: Arc<dyn Notifier>,
    /// The last value of the epoch key this node saw (see [`refresh`]).
    epoch: Mutex<Option<String>>,
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
        let conn = Self::connection(url).await?;
        Ok(Self {
            conn,
            scripts: Scripts::new(
                duration_ms(timings.connect_timeout),
                duration_ms(timings.pong_timeout),
                duration_ms(timings.reconnect_grace),
                duration_ms(tombstone_ttl),
            ),
            timings,
            time,
            index_ttl,
            held: DashMap::new(),
            pending: Mutex::new(HashMap::new()),
            local,
            epoch: Mutex::new(None),
        })
    }

    /// A self-reconnecting connection that gives up on a request quickly, so a
    /// Redis outage turns into clear errors rather than hung players.
    pub(crate) async fn connection(url: &str) -> Result<ConnectionManager, StoreError> {
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

    fn now_arg(&self, now: Millis) -> u64 {
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
        let mut conn = self.conn.clone();
        match pipe.query_async::<Vec<Value>>(&mut conn).await {
            Err(e)
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
                    || e.is_connection_dropped() =>
            {
                script
                    .prepare_invoke()
                    .load_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                pipe.query_async(&mut conn).await.map_err(unavailable)
            }
            other => other.map_err(unavailable),
        }
    }

    async fn run_list(&self, invocation: &redis::ScriptInvocation<'_>, what: &str) -> Result<Vec<Value>, StoreError> {
        match self.run(invocation).await? {
            Value::Array(items) => Ok(items),
            _ => Err(bad_reply(what)),
        }
    }

    async fn index(&self, pool: &PoolKey, id: SessionId) {
        let mut conn = self.conn.clone();
        let value = serde_json::to_string(pool).unwrap_or_default();
        let ttl = duration_ms(self.index_ttl);
        let set: Result<(), _> = redis::cmd("SET")
            .arg(index_key(id))
            .arg(value)
            .arg("PX")
            .arg(ttl)
            .query_async(&mut conn)
            .await;
        if let Err(e) = set {
            // Only operators' look-ups by id depend on it.
            tracing::debug!(error = %e, "could not index a session id");
        }
    }

    async fn unindex(&self, id: SessionId) {
        let mut conn = self.conn.clone();
        let _: Result<(), _> = redis::cmd("DEL").arg(index_key(id)).query_async(&mut conn).await;
    }

    /// The session a script granted at its `now` (the reply's second item).
    fn granted(&self, items: &[Value], new: NewSession, what: &str) -> Result<Granted, StoreError> {
        let now = items.get(1).and_then(as_int).ok_or_else(|| bad_reply(what))? as Millis;
        Ok(Granted {
            session: Session {
                id: new.id,
                name: new.name,
                state: SessionState::Pending,
                expires_at: self.timings.deadline(SessionState::Pending, now),
                holder: None,
                created_at: now,
            },
            live_others: Vec::new(),
        })
    }

    /// The pools `customer` holds sessions in, from the customer's set of pools
    /// (one key in the customer's slot: no SCAN). A pool whose sessions all died
    /// may still be listed until the next admission drops it; its scripts find
    /// it empty.
    async fn pools_of(&self, customer: &Customer, wanted: impl Fn(&str) -> bool) -> Result<Vec<PoolKey>, StoreError> {
        let probe = PoolKey::new(customer, "");
        let mut conn = self.conn.clone();
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(pools_key(&probe))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        // Each member is a pool's key: the customer's prefix, then the offer id.
        let prefix = pool_key(&probe);
        Ok(members
            .iter()
            .filter_map(|m| m.strip_prefix(&prefix))
            .filter(|offer| wanted(offer))
            .map(|offer| PoolKey::new(customer, offer))
            .collect())
    }

    /// Runs `script` once on each pool, pipelined, and returns each reply's
    /// records paired with their pool.
    async fn on_each_pool(
        &self,
        script: &redis::Script,
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
                let Value::Array(records) = reply else {
                    return Err(bad_reply("customer"));
                };
                found.extend(records.iter().filter_map(parse_record).map(|s| (pool.clone(), s)));
            }
        }
        Ok(found)
    }

    /// Registers that this node's socket `holder` holds a session.
    fn hold(&self, holder: Holder, pool: &PoolKey, id: SessionId, name: String) {
        self.held.insert(
            holder,
            Held {
                pool: pool.clone(),
                id,
                name,
            },
        );
    }

    fn release(&self, holder: Holder) {
        self.held.remove(&holder);
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(&holder);
        }
    }
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
        let items = self
            .run_list(
                on_pool(&self.scripts.admit, pool)
                    .arg(self.now_arg(now))
                    .arg(new.id.to_string())
                    .arg(&new.name)
                    .arg(limits.sessions)
                    .arg(limits.pools_per_customer),
                "admit",
            )
            .await?;
        match items.first().and_then(as_int) {
            Some(1) => {
                let id = new.id;
                let mut granted = self.granted(&items, new, "admit")?;
                granted.live_others = live_pairs(&items[2..]);
                self.index(pool, id).await;
                Ok(Ok(granted))
            }
            Some(2) => Ok(Err(Refusal::TooManyPools)),
            Some(0) => Ok(Err(Refusal::Full(LimitExceeded {
                active: items[1..]
                    .chunks_exact(2)
                    .filter_map(|pair| {
                        Some(ActiveSession {
                            id: SessionId::parse(&as_string(&pair[0])?)?,
                            name: as_string(&pair[1])?,
                        })
                    })
                    .collect(),
            }))),
            _ => Err(bad_reply("admit")),
        }
    }

    async fn take_over(
        &self,
        pool: &PoolKey,
        victim: SessionId,
        new: NewSession,
        now: Millis,
    ) -> Result<Option<TakenOver>, StoreError> {
        let items = self
            .run_list(
                on_pool(&self.scripts.take_over, pool)
                    .key(tombstone_key(pool, victim))
                    .arg(self.now_arg(now))
                    .arg(victim.to_string())
                    .arg(new.id.to_string())
                    .arg(&new.name),
                "take_over",
            )
            .await?;
        if items.first().and_then(as_int) != Some(1) {
            return Ok(None);
        }
        let victim_session = items
            .get(2)
            .and_then(parse_record)
            .ok_or_else(|| bad_reply("take_over"))?;
        let id = new.id;
        let mut granted = self.granted(&items, new, "take_over")?;
        granted.live_others = live_pairs(&items[3..]);
        self.unindex(victim).await;
        self.index(pool, id).await;
        Ok(Some(TakenOver {
            victim: victim_session,
            granted,
        }))
    }

    async fn attach(
        &self,
        pool: &PoolKey,
        id: SessionId,
        holder: Holder,
        now: Millis,
    ) -> Result<Option<Attached>, StoreError> {
        let items = self
            .run_list(
                on_pool(&self.scripts.attach, pool)
                    .arg(self.now_arg(now))
                    .arg(id.to_string())
                    .arg(holder.0.to_string()),
                "attach",
            )
            .await?;
        if items.first().and_then(as_int) != Some(1) {
            return Ok(None);
        }
        let previous = items
            .get(1)
            .and_then(as_string)
            .and_then(|h| h.parse().ok())
            .map(Holder);
        let name = items.get(2).and_then(as_string).unwrap_or_default();
        self.hold(holder, pool, id, name);
        Ok(Some(Attached { previous }))
    }

    /// Queued: the next refresh writes it, and tells the socket if its session
    /// turns out to be gone.
    async fn heartbeat(&self, _pool: &PoolKey, id: SessionId, holder: Holder, now: Millis) -> Result<bool, StoreError> {
        if !self.held.contains_key(&holder) {
            return Ok(false);
        }
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(holder, (id, now));
        }
        Ok(true)
    }

    async fn detach(&self, pool: &PoolKey, id: SessionId, holder: Holder, now: Millis) -> Result<bool, StoreError> {
        self.release(holder);
        let reply = self
            .run(
                on_pool(&self.scripts.detach, pool)
                    .arg(self.now_arg(now))
                    .arg(id.to_string())
                    .arg(holder.0.to_string()),
            )
            .await?;
        Ok(as_int(&reply) == Some(1))
    }

    async fn end(
        &self,
        pool: &PoolKey,
        id: SessionId,
        holder: Option<Holder>,
        now: Millis,
    ) -> Result<Option<Session>, StoreError> {
        if let Some(h) = holder {
            self.release(h);
        }
        // Ended by someone else than its socket (an operator): leave a tombstone
        // so the holder's next refresh learns why, should the order be lost.
        let tombstone = if holder.is_none() { "E" } else { "" };
        let reply = self
            .run(
                on_pool(&self.scripts.end, pool)
                    .key(tombstone_key(pool, id))
                    .arg(self.now_arg(now))
                    .arg(id.to_string())
                    .arg(holder.map(|h| h.0.to_string()).unwrap_or_default())
                    .arg(tombstone),
            )
            .await?;
        let ended = parse_record(&reply);
        if ended.is_some() {
            self.unindex(id).await;
        }
        Ok(ended)
    }

    async fn list(&self, pool: &PoolKey, now: Millis) -> Result<Vec<Session>, StoreError> {
        let items = self
            .run_list(on_pool(&self.scripts.list, pool).arg(self.now_arg(now)), "list")
            .await?;
        Ok(items.iter().filter_map(parse_record).collect())
    }

    async fn customer_sessions(&self, query: &SessionQuery, now: Millis) -> Result<SessionPage, StoreError> {
        let pools = self.pools_of(&query.customer, |offer| query.wants_pool(offer)).await?;
        let now = self.now_arg(now);
        let found = self
            .on_each_pool(&self.scripts.list, pools, |_, invocation| {
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
        let pools = self
            .pools_of(customer, |offer| offer_id.is_none_or(|only| only == offer))
            .await?;
        let now = self.now_arg(now);
        let ended = self
            .on_each_pool(&self.scripts.end_all, pools, |pool, invocation| {
                invocation.arg(now).arg(tombstone_prefix(pool));
            })
            .await?;
        // Each id's index key has a slot of its own (a multi-key DEL would cross
        // slots): one DEL each, pipelined. Only operators' look-ups by id depend on it.
        if !ended.is_empty() {
            let mut conn = self.conn.clone();
            let mut pipe = redis::pipe();
            for (_, session) in &ended {
                pipe.cmd("DEL").arg(index_key(session.id)).ignore();
            }
            if let Err(e) = pipe.query_async::<()>(&mut conn).await {
                tracing::debug!(error = %e, "could not unindex ended sessions");
            }
        }
        Ok(ended)
    }

    async fn locate(&self, id: SessionId) -> Result<Option<PoolKey>, StoreError> {
        let mut conn = self.conn.clone();
        let value: Option<String> = redis::cmd("GET")
            .arg(index_key(id))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(value.and_then(|v| serde_json::from_str(&v).ok()))
    }

    /// Redis expires dead pools by itself and every script drops dead sessions,
    /// so there is nothing to sweep; sockets watch their own PONG deadline.
    async fn reap(&self, _now: Millis) -> Result<Vec<(PoolKey, Session)>, StoreError> {
        Ok(Vec::new())
    }

    /// The sessions live on this node's sockets (Redis itself keeps the rest).
    async fn snapshot(&self) -> Result<Vec<(PoolKey, Session)>, StoreError> {
        Ok(Vec::new())
    }

    /// Pipelined, a thousand at a time: a node may hold tens of thousands.
    async fn restore(&self, sessions: Vec<(PoolKey, Session)>) -> Result<(), StoreError> {
        for chunk in sessions.chunks(PIPELINE_CHUNK) {
            let mut pipe = redis::pipe();
            for (pool, s) in chunk {
                let state = match s.state {
                    SessionState::Pending => "p",
                    SessionState::Live => "l",
                    SessionState::Detached => "d",
                };
                let record = serde_json::json!({
                    "s": state,
                    "e": s.expires_at,
                    "h": s.holder.map(|h| h.0.to_string()).unwrap_or_default(),
                    "c": s.created_at,
                    "n": s.name,
                });
                pipe.invoke_script(
                    on_pool(&self.scripts.restore, pool)
                        .arg(0)
                        .arg(s.id.to_string())
                        .arg(record.to_string()),
                );
                pipe.cmd("SET")
                    .arg(index_key(s.id))
                    .arg(serde_json::to_string(pool).unwrap_or_default())
                    .arg("PX")
                    .arg(duration_ms(self.index_ttl))
                    .ignore();
            }
            self.run_pipeline(&self.scripts.restore, &pipe).await?;
        }
        Ok(())
    }

    async fn count(&self) -> Result<usize, StoreError> {
        Ok(self.held.len())
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
    /// reconnect grace to come back (to any node).
    async fn hand_over(&self, now: Millis) -> Result<(), StoreError> {
        let held: Vec<(Holder, Held)> = self.held.iter().map(|e| (*e.key(), e.value().clone())).collect();
        for chunk in held.chunks(PIPELINE_CHUNK) {
            let mut pipe = redis::pipe();
            for (holder, h) in chunk {
                self.release(*holder);
                pipe.invoke_script(
                    on_pool(&self.scripts.detach, &h.pool)
                        .arg(self.now_arg(now))
                        .arg(h.id.to_string())
                        .arg(holder.0.to_string()),
                );
            }
            self.run_pipeline(&self.scripts.detach, &pipe).await?;
        }
        Ok(())
    }
}
