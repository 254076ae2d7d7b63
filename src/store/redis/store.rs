//! The session store on Redis: runs the scripts ([`super::scripts`]) on the keys
//! of [`super::keys`] and reads their replies with [`super::record`].
//!
//! What a node's own sockets do is batched: a PONG costs Redis nothing (the
//! node's liveness key in each shard vouches for its sessions there, and each
//! is checked every ten minutes, or at once when another node ended or moved
//! it: [`super::refresh`]), and an end or detach by the socket that holds the
//! session is queued for the next refresh round ([`super::refresh`]), at most one
//! refresh interval away. Any operation on a pool by this node (an admission
//! first of all) writes that pool's queued ends first, in the same round trip, so
//! a player who finished here and creates again here never finds the old
//! session still counted; another node sees the slot free within one refresh
//! interval.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use redis::Value;

use super::connection::{self, Conn, IntoRedisTarget};
use super::keys;
use super::record::{self, AdmitReply, AttachReply, TakeOverReply};
use super::scripts::{Scripts, on_pool};
use crate::domain::clock::duration_ms;
use crate::domain::events::SessionEvent;
use crate::domain::listing::{SessionPage, SessionQuery};
use crate::domain::pool::{ActiveSession, Attached, Granted, LimitExceeded, Limits, NewSession, Refusal, TakenOver};
use crate::domain::ports::{
    EndCause, Ended, Heartbeat, NoEvents, Notifier, SessionEvents, SessionStore, SessionsByState, StoreError,
};
use crate::domain::{Customer, Holder, Millis, PoolKey, Session, SessionId, SessionState, Timings};
use crate::readiness::Probe;

/// How many script calls go in one pipeline when a node acts on all its sessions.
pub(super) const PIPELINE_CHUNK: usize = 1000;

/// How many pipelines (each on one shard) a node has in flight at once when it
/// acts on sessions in many shards: enough to keep every master of a cluster
/// busy, few enough not to flood one.
pub(super) const PIPELINES_IN_FLIGHT: usize = 16;

/// Groups `items` by shard, in shard order: a pipeline may only hold the keys
/// of one slot on a Redis Cluster.
pub(super) fn by_shard<T>(items: impl IntoIterator<Item = T>, shard: impl Fn(&T) -> u16) -> BTreeMap<u16, Vec<T>> {
    let mut groups: BTreeMap<u16, Vec<T>> = BTreeMap::new();
    for item in items {
        groups.entry(shard(&item)).or_default().push(item);
    }
    groups
}

/// How often each held session is checked in Redis when tests drive time (once
/// a minute, from its first PONG, in the caller's milliseconds): the backstop
/// that tells a socket its session ended or moved should the order have been
/// lost, and what keeps its record's own deadline fresh. With Redis's clock
/// (every node) a vouch's "moved" flag does the former, and a session is
/// checked in full every `refresh::FULL_CHECK_EVERY_MS`.
pub const CHECK_EVERY_MS: Millis = 60_000;

/// A write a socket's end left for the next refresh round (or for the next
/// operation on its pool, whichever comes first).
#[derive(Debug, Clone)]
pub(crate) enum Queued {
    /// FINISHED, or no PONG in time: the session ends if this socket holds it.
    /// With `report` (its name and why it ends), the end is reported once the
    /// script says it ended the session (see `RedisStore::end_held_by`).
    End {
        id: SessionId,
        holder: Holder,
        now: Millis,
        report: Option<(String, EndCause)>,
    },
    /// The socket closed: the session waits the reconnect grace.
    Detach { id: SessionId, holder: Holder, now: Millis },
}

impl Queued {
    /// When the write was asked for: the `now` the script judges it at.
    fn now(&self) -> Millis {
        match *self {
            Self::End { now, .. } | Self::Detach { now, .. } => now,
        }
    }
}

/// The most writes (ends, detaches) one call of the writes script takes: a
/// script holds Redis for as long as it runs (an end is some 15 µs of it), so
/// a long run of writes is cut into calls of about half a millisecond.
const WRITES_PER_CALL: usize = 32;

/// One session's end or detach, in a call of the writes script
/// (`scripts::WRITES`, which says what each does).
struct Write<'a> {
    pool: &'a PoolKey,
    /// An end; otherwise a detach.
    end: bool,
    id: SessionId,
    /// The socket that must hold the session ([`record::holder_arg`]; "" for
    /// anyone, an end only).
    holder: String,
    /// Left for the holder's next check ("" for none; an end only).
    tombstone: String,
}

impl<'a> Write<'a> {
    /// The write a queued one asks for.
    fn queued(pool: &'a PoolKey, write: &Queued) -> Self {
        match *write {
            // Its report waits for the script's word: should the reply be lost,
            // the tombstone tells a retry that the end was its own.
            Queued::End {
                id, holder, ref report, ..
            } => Self::end(
                pool,
                id,
                record::holder_arg(holder),
                report
                    .as_ref()
                    .map(|_| record::socket_tombstone(holder))
                    .unwrap_or_default(),
            ),
            Queued::Detach { id, holder, .. } => Self::detach(pool, id, holder),
        }
    }

    fn end(pool: &'a PoolKey, id: SessionId, holder: String, tombstone: String) -> Self {
        Self {
            pool,
            end: true,
            id,
            holder,
            tombstone,
        }
    }

    fn detach(pool: &'a PoolKey, id: SessionId, holder: Holder) -> Self {
        Self {
            pool,
            end: false,
            id,
            holder: record::holder_arg(holder),
            tombstone: String::new(),
        }
    }
}

/// A pipeline's replies, one per write, from its calls' lists of replies
/// (`calls`: how many writes each call carried).
pub(super) fn per_write(replies: Vec<Value>, calls: &[usize]) -> Result<Vec<Value>, StoreError> {
    if replies.len() != calls.len() {
        return Err(record::unreadable(
            "queued writes",
            format!("{} replies to {} calls", replies.len(), calls.len()),
        ));
    }
    let mut out = Vec::with_capacity(calls.iter().sum());
    for (reply, &n) in replies.into_iter().zip(calls) {
        match reply {
            Value::Array(items) if items.len() == n => out.extend(items),
            other => {
                return Err(record::unreadable(
                    "queued writes",
                    format!("expected a list of {n} replies, got {other:?}"),
                ));
            }
        }
    }
    Ok(out)
}

/// The one reply of a call of the writes script that carried one write.
fn only_reply(reply: Value) -> Result<Value, StoreError> {
    per_write(vec![reply], &[1])?
        .pop()
        .ok_or_else(|| record::unreadable("write", "no reply"))
}

pub(crate) fn unavailable(e: redis::RedisError) -> StoreError {
    if moving(&e) {
        return StoreError::Unavailable(format!(
            "a Redis Cluster slot is moving between masters (a request waits up to {} s for it): {e}",
            MIGRATION_PATIENCE.as_secs()
        ));
    }
    StoreError::Unavailable(e.to_string())
}

/// How long an operation keeps trying a shard whose slot is being moved from
/// one master to another. While keys move, Redis answers a script whose keys
/// are not all on one side TRYAGAIN, and that is what keeps the script from
/// running on half of its data: every script declares its shard's index and
/// liveness prefixes (names no key has), so none runs anywhere until the slot
/// has moved whole (run on the importing master it would read a liveness key
/// not moved yet as missing and drop the sessions it vouches for; on the
/// source, it fails at the first key already moved, after writing part of its
/// work). The cluster client retries TRYAGAIN five times over a second or
/// two; this waits on, with the same growing pauses, for a slot moved the way
/// `redis-cli --cluster reshard` moves one (a few seconds for tens of thousands
/// of keys), and then answers a clear error (503) rather than hang on a move
/// that stopped half done.
pub(crate) const MIGRATION_PATIENCE: Duration = Duration::from_secs(5);

/// The first and the longest pause between two tries of a moving shard.
const MIGRATION_FIRST_WAIT: Duration = Duration::from_millis(50);
const MIGRATION_LONGEST_WAIT: Duration = Duration::from_millis(500);

/// Sends `pipe` (its commands' keys in one slot), or, if it was redirected
/// (ASK, MOVED) more often than the cluster client retries, its commands one
/// at a time. The client follows an ASK for a pipeline by sending `ASKING`
/// once before it, which covers the first command only: while a slot is
/// being moved, the others are sent back (MOVED) to the source, which
/// redirects them again (ASK), until the retries run out. One at a time, each
/// is redirected on its own to the side that has its key. Every reply is
/// returned then, so a pipeline sent here ignores none.
async fn query_pipeline(conn: &mut Conn, pipe: &redis::Pipeline) -> redis::RedisResult<Vec<Value>> {
    match pipe.query_async::<Vec<Value>>(conn).await {
        Err(e) if redirected(&e) && pipe.len() > 1 => {
            let mut replies = Vec::with_capacity(pipe.len());
            for cmd in pipe.cmd_iter() {
                replies.push(cmd.query_async::<Value>(conn).await?);
            }
            Ok(replies)
        }
        other => other,
    }
}

/// ASK or MOVED: the command's slot is served elsewhere, or moving there.
fn redirected(e: &redis::RedisError) -> bool {
    matches!(
        e.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::Ask | redis::ServerErrorKind::Moved)
    )
}

/// A slot being moved: TRYAGAIN (the keys of a multi-key command, every
/// script, are some on each side), or a redirect the cluster client gave up
/// following (its retries are few, and a script sent on by ASK to the
/// importing master is answered TRYAGAIN there, which counts as one).
pub(crate) fn moving(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::TryAgain) || redirected(e)
}

/// The pauses between tries of a shard whose slot is moving, bounded by
/// [`MIGRATION_PATIENCE`] from the first try.
struct Patience {
    started: std::time::Instant,
    next: Duration,
}

impl Patience {
    fn new() -> Self {
        Self {
            started: std::time::Instant::now(),
            next: MIGRATION_FIRST_WAIT,
        }
    }

    /// Waits before the next try; `false` (at once) when none is left.
    async fn wait(&mut self) -> bool {
        if self.started.elapsed() + self.next > MIGRATION_PATIENCE {
            return false;
        }
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(MIGRATION_LONGEST_WAIT);
        true
    }
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
    pub(super) conn: Conn,
    pub(super) scripts: Scripts,
    pub(super) timings: Timings,
    pub(super) time: TimeSource,
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
    /// The last value of each shard's epoch key this node saw (see [`super::refresh`]).
    pub(super) epochs: Mutex<HashMap<u16, String>>,
    /// When this node last vouched for its sessions in each shard (see [`super::refresh`]).
    pub(super) vouched: Mutex<HashMap<u16, std::time::Instant>>,
    /// The server that last answered this node's vouch in each shard, and when
    /// it was sent: another one means a failover or a restart, which may have
    /// lost the last writes (see [`super::refresh`]'s `master_seen`).
    pub(super) masters: Mutex<HashMap<u16, (String, std::time::Instant)>>,
    /// When this node's refresh rounds last reached Redis, and whether it must
    /// re-assert its sessions (see [`super::refresh`]).
    pub(super) vouching: Mutex<super::refresh::Vouching>,
    /// Told of the dead sessions an admission deletes: no node ends those (see
    /// [`Self::with_events`]).
    pub(super) events: Arc<dyn SessionEvents>,
}

impl RedisStore {
    /// Connects to Redis (one server, or a cluster). `local` reaches this
    /// node's sockets. A session id is found by operators for as long as its
    /// session is in Redis (the shard's index drops it with the session).
    pub async fn connect(
        target: impl IntoRedisTarget,
        timings: Timings,
        tombstone_ttl: Duration,
        node_lost_after: Duration,
        time: TimeSource,
        local: Arc<dyn Notifier>,
    ) -> Result<Self, StoreError> {
        let target = target.into_target().map_err(unavailable)?;
        let mut conn = connection::connect(&target).await.map_err(unavailable)?;
        let scripts = Scripts::new(
            duration_ms(timings.connect_timeout),
            duration_ms(timings.pong_timeout),
            duration_ms(timings.reconnect_grace),
            duration_ms(tombstone_ttl),
            duration_ms(node_lost_after),
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
            node: None,
            held: DashMap::new(),
            pending: Mutex::new(HashMap::new()),
            queued: Mutex::new(HashMap::new()),
            local,
            epochs: Mutex::new(HashMap::new()),
            vouched: Mutex::new(HashMap::new()),
            masters: Mutex::new(HashMap::new()),
            vouching: Mutex::new(super::refresh::Vouching::default()),
            events: Arc::new(NoEvents),
        })
    }

    /// The store of node `node`: its refresh rounds vouch for that node's sockets.
    pub fn for_node(mut self, node: u64) -> Self {
        self.node = Some(node);
        self
    }

    /// Reports to `events` the end of every dead session an admission, a
    /// take-over, an attach or a purge round ([`super::purge`]) deletes from
    /// Redis: a session whose node died (SIGKILL, or cut off), or one granted or
    /// detached whose deadline passed with no socket. No node ends those, so the
    /// node whose script deleted them says they ended, once (a record is deleted
    /// by one script only), from the reply it reads anyway. The other scripts
    /// leave dead records in place for these (see PROTOCOL.md §3.1).
    pub fn with_events(mut self, events: Arc<dyn SessionEvents>) -> Self {
        self.events = events;
        self
    }

    fn report_gone(&self, pool: &PoolKey, gone: Vec<record::Purged>) {
        for dead in gone {
            let pool = pool.with_offer(&dead.offer);
            self.events
                .report(SessionEvent::ended(&pool, dead.id, Some(&dead.name), dead.cause));
        }
    }

    pub(super) fn pong_timeout(&self) -> Duration {
        self.timings.pong_timeout
    }

    /// This node as the scripts that may end or move another node's session
    /// take it (hex, as in a socket id; "" in tests, which hold sockets of any
    /// node): they flag the holder's node unless it is this one.
    pub(super) fn node_arg(&self) -> String {
        self.node.map(|node| format!("{node:x}")).unwrap_or_default()
    }

    pub(super) fn now_arg(&self, now: Millis) -> u64 {
        match self.time {
            TimeSource::Redis => 0,
            TimeSource::Caller => now,
        }
    }

    /// Runs a script, once more if the connection to one Redis had dropped (the
    /// manager reconnects by itself, but does not replay the request that found
    /// it dead; the cluster client does, within its own retries and time),
    /// and again while its shard's slot is being moved between masters
    /// ([`moving`], within [`MIGRATION_PATIENCE`]). A replayed script cannot
    /// break a limit: each one re-checks the pool.
    pub(super) async fn run(&self, invocation: &redis::ScriptInvocation<'_>) -> Result<Value, StoreError> {
        let mut conn = self.conn.clone();
        let mut patience = Patience::new();
        loop {
            let result = match invocation.invoke_async(&mut conn).await {
                Err(e) if matches!(self.conn, Conn::Single(_)) && (e.is_connection_dropped() || e.is_io_error()) => {
                    invocation.invoke_async(&mut conn).await
                }
                other => other,
            };
            match result {
                Err(e) if moving(&e) && patience.wait().await => continue,
                other => return other.map_err(unavailable),
            }
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
    /// retrying once if Redis had lost one (or the connection dropped), and
    /// again while its shard's slot is moving (a request waits for it).
    pub(crate) async fn run_pipeline_of(
        &self,
        scripts: &[&redis::Script],
        pipe: &redis::Pipeline,
    ) -> Result<Vec<Value>, StoreError> {
        self.run_pipeline_with(scripts, pipe, true).await
    }

    /// [`Self::run_pipeline_of`], waiting for a moving slot only if `patient`:
    /// a refresh round does not (its work is tried again next round, and a
    /// round that waits comes late, which stops every admission).
    async fn run_pipeline_with(
        &self,
        scripts: &[&redis::Script],
        pipe: &redis::Pipeline,
        patient: bool,
    ) -> Result<Vec<Value>, StoreError> {
        let mut conn = self.conn.clone();
        let mut patience = Patience::new();
        loop {
            let result = match query_pipeline(&mut conn, pipe).await {
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
                    query_pipeline(&mut conn, pipe).await
                }
                other => other,
            };
            match result {
                Err(e) if patient && moving(&e) && patience.wait().await => continue,
                other => return other.map_err(unavailable),
            }
        }
    }

    /// Runs `pipes` (each on one shard), [`PIPELINES_IN_FLIGHT`] at a time, and
    /// returns each one's replies or error, in order.
    pub(crate) async fn run_pipelines(
        &self,
        scripts: &[&redis::Script],
        pipes: &[redis::Pipeline],
    ) -> Vec<Result<Vec<Value>, StoreError>> {
        self.run_pipelines_with(scripts, pipes, false).await
    }

    /// [`Self::run_pipelines`], each waiting for a moving slot if `patient`.
    pub(super) async fn run_pipelines_with(
        &self,
        scripts: &[&redis::Script],
        pipes: &[redis::Pipeline],
        patient: bool,
    ) -> Vec<Result<Vec<Value>, StoreError>> {
        // In waves, with plain loops: a closure here would trip the compiler's
        // proof that the futures of the store's methods are `Send`.
        let mut results = Vec::with_capacity(pipes.len());
        for wave in pipes.chunks(PIPELINES_IN_FLIGHT) {
            let mut running = Vec::with_capacity(wave.len());
            for pipe in wave {
                running.push(self.run_pipeline_with(scripts, pipe, patient));
            }
            results.extend(futures_util::future::join_all(running).await);
        }
        results
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

    /// Adds a chunk of one shard's queued writes to `pipe`, in order: each run
    /// of writes judged at one `now` as calls of the writes script, at most
    /// [`WRITES_PER_CALL`] a call. Returns how many writes each call carries.
    pub(super) fn queued_into(&self, pipe: &mut redis::Pipeline, chunk: &[(PoolKey, Queued)]) -> Vec<usize> {
        let mut calls = Vec::new();
        let mut rest = chunk;
        while let Some((_, first)) = rest.first() {
            let now = self.now_arg(first.now());
            let run = rest
                .iter()
                .take(WRITES_PER_CALL)
                .take_while(|(_, w)| self.now_arg(w.now()) == now)
                .count();
            let writes: Vec<Write<'_>> = rest[..run].iter().map(|(pool, w)| Write::queued(pool, w)).collect();
            pipe.invoke_script(&self.writes_invocation(&writes, now));
            calls.push(run);
            rest = &rest[run..];
        }
        calls
    }

    /// One call of the writes script for `writes` (of one shard, not empty),
    /// all judged at `now` (as [`Self::now_arg`] gives it).
    fn writes_invocation<'s>(&'s self, writes: &[Write<'_>], now: u64) -> redis::ScriptInvocation<'s> {
        let mut invocation = match writes.first() {
            Some(w) => on_pool(&self.scripts.writes, w.pool, now),
            None => self.scripts.writes.prepare_invoke(),
        };
        // The ending node matters only to an end by anyone (it flags the
        // holder's node unless it is that node): the others send it empty.
        let by = self.node_arg();
        for (n, w) in writes.iter().enumerate() {
            // The first write's customer and offer are the script's own (`on_pool`).
            if n > 0 {
                invocation.key(keys::customer(w.pool)).arg(w.pool.offer_id());
            }
            invocation
                .key(keys::tombstone(w.pool, w.id))
                .arg(if w.end { "e" } else { "d" })
                .arg(record::id_arg(w.id))
                .arg(&w.holder)
                .arg(&w.tombstone)
                .arg(if w.end && w.holder.is_empty() { by.as_str() } else { "" });
        }
        invocation
    }

    /// Runs one write on its pool ([`Self::run_on`]): its reply.
    async fn write_one(&self, write: Write<'_>, now: Millis) -> Result<Value, StoreError> {
        let invocation = self.writes_invocation(std::slice::from_ref(&write), self.now_arg(now));
        only_reply(self.run_on(write.pool, &invocation).await?)
    }

    /// Writes the queued ends and detaches of the pools `which` selects, a
    /// pipeline per shard and thousand. Returns how many were written; the
    /// writes of a pipeline that failed are queued again for the next round.
    pub(super) async fn write_queued(&self, which: impl Fn(&PoolKey) -> bool) -> Result<usize, StoreError> {
        self.write_queued_with(which, false).await
    }

    /// [`Self::write_queued`] before a request's own operation: waits for a
    /// moving slot as the operation would.
    async fn write_queued_now(&self, which: impl Fn(&PoolKey) -> bool) -> Result<usize, StoreError> {
        self.write_queued_with(which, true).await
    }

    async fn write_queued_with(&self, which: impl Fn(&PoolKey) -> bool, patient: bool) -> Result<usize, StoreError> {
        let writes = self.take_queued(which);
        if writes.is_empty() {
            return Ok(0);
        }
        let count = writes.len();
        let chunks: Vec<Vec<(PoolKey, Queued)>> = by_shard(writes, |(pool, _)| pool.shard())
            .into_values()
            .flat_map(|group| {
                group
                    .chunks(PIPELINE_CHUNK)
                    .map(<[(PoolKey, Queued)]>::to_vec)
                    .collect::<Vec<_>>()
            })
            .collect();
        let (pipes, calls): (Vec<redis::Pipeline>, Vec<Vec<usize>>) = chunks
            .iter()
            .map(|chunk| {
                let mut pipe = redis::pipe();
                let calls = self.queued_into(&mut pipe, chunk);
                (pipe, calls)
            })
            .unzip();
        let results = self.run_pipelines_with(&[&self.scripts.writes], &pipes, patient).await;
        let mut failed = None;
        for ((chunk, calls), result) in chunks.into_iter().zip(&calls).zip(results) {
            match result {
                Ok(replies) => match per_write(replies, calls) {
                    Ok(replies) => self.report_written(&chunk, &replies),
                    // Written (the pipeline went through) but not readable: nothing
                    // to report, and nothing to write again.
                    Err(e) => failed = Some(e),
                },
                Err(e) => {
                    self.requeue(chunk);
                    failed = Some(e);
                }
            }
        }
        failed.map_or(Ok(count), Err)
    }

    /// Reports the queued ends that waited for Redis to say whether they ended
    /// their session, and did.
    fn report_written(&self, chunk: &[(PoolKey, Queued)], replies: &[Value]) {
        for ((pool, write), reply) in chunk.iter().zip(replies) {
            if let Queued::End {
                id,
                report: Some((name, cause)),
                ..
            } = write
                && matches!(
                    record::end_reply(reply),
                    Ok(record::EndReply::Ended(_) | record::EndReply::Again)
                )
            {
                self.events.report(SessionEvent::ended(pool, *id, Some(name), *cause));
            }
        }
    }

    /// Runs `invocation` on `pool`, after writing the ends and detaches queued
    /// for any pool of its customer: what this node's sockets ended is never
    /// still counted by this node's next operation for that customer (its limit,
    /// its cap on pools). Two round trips only when something was queued there;
    /// not one pipeline, since a pipeline retried after a flushed script cache
    /// would run the operation twice.
    async fn run_on(&self, pool: &PoolKey, invocation: &redis::ScriptInvocation<'_>) -> Result<Value, StoreError> {
        let customer = Customer {
            publisher_id: pool.publisher_id().to_owned(),
            customer_id: pool.customer_id().to_owned(),
        };
        self.write_queued_now(|p| of_customer(p, &customer)).await?;
        self.run(invocation).await
    }

    /// The data epoch this node last saw in `shard` (empty: none yet).
    pub(super) fn known_epoch(&self, shard: u16) -> String {
        self.epochs
            .lock()
            .ok()
            .and_then(|e| e.get(&shard).cloned())
            .unwrap_or_default()
    }

    /// Learns `shard`'s epoch from a script's reply, if this node knew none:
    /// from then on, a change of epoch there is noticed.
    pub(super) fn learn_epoch(&self, shard: u16, epoch: &str) {
        if epoch.is_empty() {
            return;
        }
        if let Ok(mut epochs) = self.epochs.lock() {
            epochs.entry(shard).or_insert_with(|| epoch.to_owned());
        }
    }

    /// The session a script granted at its `now`.
    fn granted(&self, new: NewSession, now: Millis, live: Vec<record::LiveSession>, others: u32) -> Granted {
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
            others,
        }
    }

    /// The pools `customer` holds sessions in: the offers of the records in
    /// the customer's hash (one key: no SCAN). A pool whose sessions all died
    /// may still be listed until a script drops them; its scripts find it empty.
    async fn pools_of(&self, customer: &Customer, wanted: impl Fn(&str) -> bool) -> Result<Vec<PoolKey>, StoreError> {
        let probe = PoolKey::new(customer, "");
        let mut conn = self.conn.clone();
        let records: Vec<String> = redis::cmd("HVALS")
            .arg(keys::customer(&probe))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut offers = std::collections::BTreeSet::new();
        for stored in &records {
            let offer = record::stored_offer(stored).ok_or_else(|| record::unreadable("session record", stored))?;
            if wanted(offer) {
                offers.insert(offer);
            }
        }
        Ok(offers.into_iter().map(|offer| PoolKey::new(customer, offer)).collect())
    }

    /// Runs `script` once on each pool, pipelined, and returns each reply's
    /// records paired with their pool.
    /// The pools are one customer's: one shard, one pipeline per thousand.
    async fn on_each_pool(
        &self,
        script: &redis::Script,
        what: &str,
        pools: Vec<PoolKey>,
        now: u64,
        args: impl Fn(&PoolKey, &mut redis::ScriptInvocation<'_>),
    ) -> Result<Vec<(PoolKey, Session)>, StoreError> {
        let mut found = Vec::new();
        for chunk in pools.chunks(PIPELINE_CHUNK) {
            let mut pipe = redis::pipe();
            for pool in chunk {
                let mut invocation = on_pool(script, pool, now);
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

    /// Releases `holder` if it still holds session `id`: `true` if it did, so
    /// that what ended the session tells its socket once, whichever of a check
    /// or a re-assertion running side by side found it first.
    pub(crate) fn release_held(&self, holder: Holder, id: SessionId) -> bool {
        if self.held.remove_if(&holder, |_, held| held.id == id).is_none() {
            return false;
        }
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(&holder);
        }
        true
    }

    pub(crate) fn release(&self, holder: Holder) {
        self.held.remove(&holder);
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(&holder);
        }
    }
}

impl RedisStore {
    /// Ends the session socket `holder` holds. Queued for the next round, and
    /// answered at once from what this node knows of the session: the slot is
    /// free for this node's next operation on the pool at once (it writes the
    /// queued end first, in the same round trip) and for every node within one
    /// refresh interval. Unless the node's liveness key in the shard may have
    /// run out: another node may then have found the session dead, and only
    /// the script can tell whether it is still this socket's to end, so it runs
    /// now. If Redis does not answer, the end is queued with `cause`, and
    /// reported when a round has written it, if it ended the session then.
    async fn end_held_by(
        &self,
        pool: &PoolKey,
        id: SessionId,
        holder: Holder,
        cause: Option<EndCause>,
        now: Millis,
    ) -> Result<Ended, StoreError> {
        let Some(held) = self.holding(holder, id) else {
            self.release(holder);
            return Ok(self
                .end_with(pool, id, Some(holder), "", now)
                .await?
                .map_or(Ended::Gone, Ended::Now));
        };
        self.release(holder);
        let queue_end = |report| {
            self.queue(
                pool,
                Queued::End {
                    id,
                    holder,
                    now,
                    report,
                },
            )
        };
        if !self.may_have_lost(pool.shard()) {
            queue_end(None);
            return Ok(Ended::Now(Session {
                id,
                name: held.name,
                state: SessionState::Live,
                expires_at: now,
                holder: Some(holder),
                created_at: held.created_at,
            }));
        }
        // Its tombstone names the socket: should the reply be lost after Redis
        // ended it, the queued retry learns that the end was its own.
        let end = Write::end(pool, id, record::holder_arg(holder), record::socket_tombstone(holder));
        let reply = self
            .write_one(end, now)
            .await
            .and_then(|reply| record::end_reply(&reply));
        match reply {
            Ok(record::EndReply::Ended(session)) => Ok(Ended::Now(session)),
            Ok(record::EndReply::Again | record::EndReply::Nothing) => Ok(Ended::Gone),
            Err(e) => {
                tracing::debug!(error = %e, "a socket's end waits for Redis");
                queue_end(cause.map(|cause| (held.name, cause)));
                Ok(Ended::Later)
            }
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
        let end = Write::end(
            pool,
            id,
            holder.map(record::holder_arg).unwrap_or_default(),
            tombstone.to_owned(),
        );
        let reply = self.write_one(end, now).await?;
        record::session_or_nil(&reply, "end")
    }
}

/// A new random value for a shard's epoch key, should the shard have none.
pub(super) fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn of_customer(pool: &PoolKey, customer: &Customer) -> bool {
    pool.publisher_id() == customer.publisher_id && pool.customer_id() == customer.customer_id
}

/// `PING` on the connection every session operation uses: if it does not answer,
/// neither would an admission. On a cluster, also the cluster's own verdict
/// (`cluster_state` in `CLUSTER INFO`, from any node): the client's `PING` to every
/// master skips one it has lost its connection to (or asks its replica), so it
/// answers while a master is down; a cluster whose slots are not all served
/// refuses every command (`cluster-require-full-coverage`, on by default) until a
/// replica is promoted, and admits no one meanwhile.
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
            .map_err(|e| e.to_string())?;
        if matches!(self.conn, Conn::Cluster(_)) {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            if !info.lines().any(|l| l.trim() == "cluster_state:ok") {
                return Err("the cluster does not serve every slot (cluster_state is not ok)".into());
            }
        }
        Ok(())
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
        // Twice at most: a first "lost" reply makes this node put its sessions back
        // (and learn the new epoch), so they count before anyone is admitted beside them.
        let shard = pool.shard();
        self.admitting(shard).await?;
        for _ in 0..2 {
            let reply = self
                .run_on(
                    pool,
                    on_pool(&self.scripts.admit, pool, self.now_arg(now))
                        .key(keys::epoch(shard))
                        .arg(record::id_arg(new.id))
                        .arg(&new.name)
                        .arg(limits.sessions)
                        .arg(limits.pools_per_customer)
                        .arg(keys::customer_tag(pool))
                        .arg(self.known_epoch(shard))
                        .arg(new_epoch())
                        .arg(limits.customer_sessions.map(|c| c.to_string()).unwrap_or_default()),
                )
                .await?;
            return match record::reply(&reply, "admit")? {
                AdmitReply::Granted {
                    now,
                    live,
                    others,
                    epoch,
                    gone,
                } => {
                    self.report_gone(pool, gone);
                    self.learn_epoch(shard, &epoch);
                    Ok(Ok(self.granted(new, now, live, others)))
                }
                AdmitReply::TooManyPools { gone } => {
                    self.report_gone(pool, gone);
                    Ok(Err(Refusal::TooManyPools))
                }
                AdmitReply::Full { held, gone } => {
                    self.report_gone(pool, gone);
                    Ok(Err(Refusal::Full(limit_exceeded(held))))
                }
                AdmitReply::Household { held, gone } => {
                    self.report_gone(pool, gone);
                    Ok(Err(Refusal::Household(limit_exceeded(held))))
                }
                AdmitReply::Lost { epoch } => {
                    self.restore_if_lost(shard, &epoch).await?;
                    continue;
                }
            };
        }
        Err(StoreError::Unavailable(
            "a Redis shard changed its data epoch twice during one admission".into(),
        ))
    }

    async fn take_over(
        &self,
        pool: &PoolKey,
        victim: SessionId,
        new: NewSession,
        now: Millis,
    ) -> Result<Option<TakenOver>, StoreError> {
        self.admitting(pool.shard()).await?;
        let reply = self
            .run_on(
                pool,
                on_pool(&self.scripts.take_over, pool, self.now_arg(now))
                    .key(keys::tombstone(pool, victim))
                    .arg(record::id_arg(victim))
                    .arg(record::id_arg(new.id))
                    .arg(&new.name)
                    .arg(keys::customer_tag(pool))
                    .arg(self.node_arg()),
            )
            .await?;
        let (now, victim_session, live, others) = match record::reply(&reply, "take_over")? {
            TakeOverReply::Taken {
                now,
                victim,
                live,
                others,
                gone,
            } => {
                self.report_gone(pool, gone);
                (now, victim, live, others)
            }
            TakeOverReply::Gone { gone } => {
                self.report_gone(pool, gone);
                return Ok(None);
            }
        };
        Ok(Some(TakenOver {
            victim: victim_session,
            granted: self.granted(new, now, live, others),
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
                on_pool(&self.scripts.attach, pool, self.now_arg(now))
                    .key(keys::epoch(pool.shard()))
                    .arg(record::id_arg(id))
                    .arg(record::holder_arg(holder)),
            )
            .await?;
        let (previous, name, created_at, epoch) = match record::reply(&reply, "attach")? {
            AttachReply::Attached {
                previous,
                name,
                created_at,
                epoch,
                gone,
            } => {
                self.report_gone(pool, gone);
                (previous, name, created_at, epoch)
            }
            AttachReply::Gone { gone } => {
                self.report_gone(pool, gone);
                return Ok(None);
            }
        };
        self.learn_epoch(pool.shard(), &epoch);
        // A socket of this node that held it before holds nothing now: its end
        // or close must not be queued as if it did.
        if let Some(previous) = previous
            && self.holding(previous, id).is_some()
        {
            self.release(previous);
        }
        self.hold(holder, pool, id, name, created_at);
        // The node's held map shares the socket's key already (`hold`).
        Ok(Some(Attached { previous, key: None }))
    }

    /// Queued: the node vouches for its live sessions as a whole, and the next
    /// refresh round checks this one in Redis if it is due (its first PONG, then
    /// every ten minutes, or at once if a vouch read that another node ended or
    /// moved a session here: [`super::refresh`]), telling the socket if its session turns out to
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
        let reply = self.write_one(Write::detach(pool, id, holder), now).await?;
        Ok(record::int(&reply, "detach")? == 1)
    }

    /// Ended by the socket that holds it: see [`Self::end_held_by`]. Ended by
    /// anyone else (an operator): at once.
    async fn end(
        &self,
        pool: &PoolKey,
        id: SessionId,
        holder: Option<Holder>,
        now: Millis,
    ) -> Result<Option<Session>, StoreError> {
        if let Some(h) = holder {
            return match self.end_held_by(pool, id, h, None, now).await? {
                Ended::Now(session) => Ok(Some(session)),
                Ended::Gone | Ended::Later => Ok(None),
            };
        }
        // Ended by someone else than its socket (an operator): leave a tombstone
        // so the holder's next check learns why, should the order be lost.
        self.end_with(pool, id, None, "E", now).await
    }

    async fn end_by_socket(
        &self,
        pool: &PoolKey,
        id: SessionId,
        holder: Holder,
        cause: EndCause,
        now: Millis,
    ) -> Result<Ended, StoreError> {
        self.end_held_by(pool, id, holder, Some(cause), now).await
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
            .run_on(pool, &on_pool(&self.scripts.list, pool, self.now_arg(now)))
            .await?;
        record::sessions(reply, "list")
    }

    async fn customer_sessions(&self, query: &SessionQuery, now: Millis) -> Result<SessionPage, StoreError> {
        self.write_queued_now(|p| of_customer(p, &query.customer)).await?;
        let pools = self.pools_of(&query.customer, |offer| query.wants_pool(offer)).await?;
        let now = self.now_arg(now);
        let found = self
            .on_each_pool(&self.scripts.list, "list", pools, now, |_, _| {})
            .await?;
        Ok(query.page(found))
    }

    async fn end_customer(
        &self,
        customer: &Customer,
        offer_id: Option<&str>,
        now: Millis,
    ) -> Result<Vec<(PoolKey, Session)>, StoreError> {
        self.write_queued_now(|p| of_customer(p, customer)).await?;
        let pools = self
            .pools_of(customer, |offer| offer_id.is_none_or(|only| only == offer))
            .await?;
        let now = self.now_arg(now);
        self.on_each_pool(&self.scripts.end_all, "end_all", pools, now, |pool, invocation| {
            invocation.arg(keys::tombstone_prefix(pool)).arg(self.node_arg());
        })
        .await
    }

    /// The id names its shard: one look in that shard's index.
    async fn locate(&self, id: SessionId) -> Result<Option<PoolKey>, StoreError> {
        let shard = id.shard();
        let found: Option<(String, String)> = self
            .run(
                self.scripts
                    .locate
                    .key(keys::index(id))
                    .arg(record::id_arg(id))
                    .arg(keys::customer_prefix(shard)),
            )
            .await
            .and_then(|v| redis::from_redis_value(v).map_err(|e| record::unreadable("locate", e)))?;
        found
            .map(|(tag, offer)| {
                keys::parse_customer_tag(&tag, &offer).ok_or_else(|| record::unreadable("session index", tag))
            })
            .transpose()
    }

    /// Pipelined per shard, a thousand at a time: a node may hold tens of thousands.
    async fn restore(&self, sessions: Vec<(PoolKey, Session)>) -> Result<(), StoreError> {
        let pipes: Vec<redis::Pipeline> = by_shard(sessions, |(pool, _)| pool.shard())
            .into_values()
            .flat_map(|group| {
                group
                    .chunks(PIPELINE_CHUNK)
                    .map(|chunk| {
                        let mut pipe = redis::pipe();
                        for (pool, s) in chunk {
                            pipe.invoke_script(
                                on_pool(&self.scripts.restore, pool, 0)
                                    .arg(record::id_arg(s.id))
                                    .arg(record::encode(s))
                                    .arg(keys::customer_tag(pool)),
                            );
                        }
                        pipe
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        for result in self.run_pipelines(&[&self.scripts.restore], &pipes).await {
            result?;
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
    /// itself. Each detach is queued behind the ends already queued for its
    /// pool, and one round writes them all, many to a script call.
    async fn hand_over(&self, now: Millis) -> Result<(), StoreError> {
        let held: Vec<(Holder, Held)> = self.held.iter().map(|e| (*e.key(), e.value().clone())).collect();
        for (holder, h) in held {
            self.release(holder);
            self.queue(&h.pool, Queued::Detach { id: h.id, holder, now });
        }
        self.write_queued(|_| true).await?;
        Ok(())
    }
}

/// The sessions a full pool (or household) holds, as a refusal lists them.
fn limit_exceeded(held: Vec<record::Named>) -> LimitExceeded {
    LimitExceeded {
        active: held
            .into_iter()
            .map(|s| ActiveSession { id: s.id, name: s.name })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_pipelines_replies_are_spread_over_its_writes_in_order() {
        let replies = vec![
            Value::Array(vec![text("a"), Value::Nil, text("again")]),
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![text("b"), Value::Int(0)]),
        ];
        assert_eq!(
            per_write(replies, &[3, 1, 2]).unwrap(),
            vec![
                text("a"),
                Value::Nil,
                text("again"),
                Value::Int(1),
                text("b"),
                Value::Int(0)
            ]
        );
        assert_eq!(only_reply(Value::Array(vec![text("c")])).unwrap(), text("c"));
    }

    #[test]
    fn replies_of_the_wrong_shape_are_an_error_not_a_guess() {
        // A call that answered for fewer writes than it carried.
        let short = vec![Value::Array(vec![text("a")])];
        assert!(per_write(short, &[2]).is_err());
        // A call that answered with something else than a list.
        assert!(per_write(vec![Value::Nil], &[1]).is_err());
        assert!(only_reply(Value::Int(1)).is_err());
        assert!(only_reply(Value::Array(Vec::new())).is_err());
        // Fewer replies than calls.
        assert!(per_write(vec![Value::Array(vec![Value::Int(1)])], &[1, 1]).is_err());
    }
}
