//! The node's refresh loop. Each round it vouches for the live sessions its
//! sockets hold (one key for all of them), writes the ends and detaches its
//! sockets queued, checks the held sessions that are due (a PONG heard, and the
//! last check a [`CHECK_EVERY_MS`] ago), tells the sockets whose session turned
//! out to be gone (the backstop for lost orders), and puts this node's sessions
//! back if Redis lost its data.
//!
//! A store that stalls or is cut off from the node (a fork for a snapshot, a
//! network blip, a failover) for longer than the node's liveness key lives lets
//! that key expire: the first script to touch a pool afterwards finds the node's
//! sessions dead and deletes them, while their players go on answering PINGs
//! (which cost Redis nothing). So a round that vouches after such a gap
//! re-asserts every held session ([`RedisStore::reassert_after_outage`]), and
//! until it has, the node admits no one (503, as while Redis is unreachable).

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Value;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::keys::{self, node};
use super::record::{self, CheckReply};
use super::store::{CHECK_EVERY_MS, Held, RedisStore, TimeSource, unavailable};
use crate::domain::ports::{Control, SessionStore, StoreError};
use crate::domain::{Holder, Millis, PoolKey, Session, SessionId, SessionState};

/// What one refresh round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// Held sessions checked and found held by their socket.
    pub refreshed: usize,
    pub gone: usize,
    pub restored: usize,
    /// Queued ends and detaches written.
    pub written: usize,
    /// Held sessions put back after an outage ([`RedisStore::reassert_after_outage`]).
    pub reasserted: usize,
}

/// The node's vouching, as its refresh rounds see it.
#[derive(Debug, Default)]
pub(crate) struct Vouching {
    /// When the last vouch was answered (`None`: not yet).
    last: Option<Instant>,
    /// A round failed, or the last vouch came too late: admissions wait until
    /// the held sessions are re-asserted.
    outage: bool,
}

/// A gap since the last vouch longer than this fraction of the PONG timeout may
/// have let the liveness key expire (it was written up to a round trip before
/// its answer came back): the held sessions are re-asserted.
const GAP_DIVISOR: u32 = 2;

/// Added to the outage's length when looking for sessions admitted during it,
/// so that clock steps and round trips only ever make the re-assertion more
/// careful (a session admitted just before the outage counts as newer).
const OUTAGE_MARGIN_MS: u64 = 1_000;

/// How many sessions one call of the check script takes.
const CHECK_CHUNK: usize = 250;

/// Refreshes every `every`, and keeps node `node`'s claim on its id alive.
pub async fn run(store: Arc<RedisStore>, node: u64, every: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                let round = async {
                    let mut conn = store.conn.clone();
                    let _: Result<(), _> = redis::cmd("PEXPIRE")
                        .arg(node::lease(node))
                        .arg(node::LEASE_TTL_MS)
                        .query_async(&mut conn)
                        .await;
                    store.refresh().await
                };
                tokio::pin!(round);
                // A round still unanswered after this long means Redis is stalled or out
                // of reach: admissions stop now, not when the request times out, so that
                // none is left waiting in a socket to be carried out when Redis resumes.
                let late = store.timings.pong_timeout / GAP_DIVISOR;
                let result = match tokio::time::timeout(late, &mut round).await {
                    Ok(result) => result,
                    Err(_) => {
                        store.note_outage();
                        round.await
                    }
                };
                if let Err(e) = result {
                    // Held sessions keep playing; their PONGs are retried next round.
                    store.note_outage();
                    tracing::warn!(error = %e, "session refresh failed; retrying");
                }
            }
        }
    }
}

impl RedisStore {
    /// The data epoch this node last saw (empty before its first refresh).
    pub(super) fn known_epoch(&self) -> String {
        self.epoch.lock().ok().and_then(|e| e.clone()).unwrap_or_default()
    }

    /// One refresh round.
    pub async fn refresh(&self) -> Result<Round, StoreError> {
        let mut round = Round {
            restored: self.restore_if_lost().await?,
            ..Round::default()
        };
        let heard: Vec<(Holder, (SessionId, Millis))> = match self.pending.lock() {
            Ok(mut pending) => pending.drain().collect(),
            Err(_) => Vec::new(),
        };
        if let Err(e) = self.vouch(&heard).await {
            self.pending_again(&heard);
            return Err(e);
        }
        round.reasserted = self.reassert_after_outage().await?;
        round.written = self.write_queued(|_| true).await?;
        // Due: the first PONG since the socket attached, then one a minute.
        let due: Vec<(Holder, Held, Millis)> = heard
            .iter()
            .filter_map(|(holder, (id, now))| {
                let mut held = self.held.get_mut(holder)?;
                if held.id != *id || held.checked_at.is_some_and(|at| *now < at + CHECK_EVERY_MS) {
                    return None;
                }
                held.checked_at = Some(*now);
                Some((*holder, held.clone(), *now))
            })
            .collect();
        for chunk in due.chunks(CHECK_CHUNK) {
            let replies = match self.check(chunk).await {
                Ok(replies) => replies,
                Err(e) => {
                    // Checked again at their next PONG.
                    for (holder, _, _) in chunk {
                        if let Some(mut held) = self.held.get_mut(holder) {
                            held.checked_at = None;
                        }
                    }
                    return Err(e);
                }
            };
            for ((holder, _, _), reply) in chunk.iter().zip(replies) {
                let order = match reply {
                    CheckReply::Held => {
                        round.refreshed += 1;
                        continue;
                    }
                    CheckReply::Elsewhere => Control::Terminate,
                    CheckReply::Gone { tombstone } => match tombstone.strip_prefix('T') {
                        Some(name) => Control::TakeOver {
                            session_name: name.to_owned(),
                        },
                        None => Control::Expire,
                    },
                };
                round.gone += 1;
                self.release(*holder);
                self.local.notify(*holder, order);
            }
        }
        Ok(round)
    }

    fn pending_again(&self, heard: &[(Holder, (SessionId, Millis))]) {
        if let Ok(mut pending) = self.pending.lock() {
            for (holder, beat) in heard {
                pending.entry(*holder).or_insert(*beat);
            }
        }
    }

    /// Rewrites this node's liveness key: its live sessions hold their slots for
    /// one more PONG timeout. With the caller's clock (tests), the latest PONG
    /// heard is "now", and a round that heard none vouches for nothing new.
    async fn vouch(&self, heard: &[(Holder, (SessionId, Millis))]) -> Result<(), StoreError> {
        let now = match self.time {
            TimeSource::Redis => 0,
            TimeSource::Caller => match heard.iter().map(|(_, (_, now))| *now).max() {
                Some(now) => now,
                None => return Ok(()),
            },
        };
        // Every socket of a node names it; tests hold sockets of node 0.
        let nodes: std::collections::BTreeSet<u64> = match self.node {
            Some(node) => [node].into(),
            None => heard.iter().map(|(holder, _)| holder.node()).collect(),
        };
        if nodes.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for node in nodes {
            pipe.invoke_script(self.scripts.vouch.key(keys::alive(node)).arg(now));
        }
        self.run_pipeline(&self.scripts.vouch, &pipe).await?;
        self.vouched(Instant::now());
        Ok(())
    }

    /// Notes a vouch answered at `at`: one that comes more than a fraction of
    /// the PONG timeout after the last means an outage.
    fn vouched(&self, at: Instant) {
        let Ok(mut v) = self.vouching.lock() else { return };
        let limit = self.timings.pong_timeout / GAP_DIVISOR;
        if v.last.is_some_and(|last| at.duration_since(last) > limit) {
            v.outage = true;
        }
        if !v.outage {
            v.last = Some(at);
        }
    }

    /// A refresh round failed: Redis may be stalled or out of reach.
    pub(super) fn note_outage(&self) {
        if let Ok(mut v) = self.vouching.lock() {
            v.outage = true;
        }
    }

    /// Refuses admissions (and take-overs) while this node's held sessions may be
    /// missing from Redis, until [`Self::reassert_after_outage`] put them back: a
    /// newcomer admitted first could take their slots.
    pub(super) fn admitting(&self) -> Result<(), StoreError> {
        match self.vouching.lock() {
            Ok(v) if v.outage && self.node.is_some() => Err(StoreError::Unavailable(
                "Redis was unreachable; this node is re-asserting its sessions".into(),
            )),
            _ => Ok(()),
        }
    }

    /// After an outage (a refresh round failed, or vouched too late), puts back
    /// every session this node's sockets hold that Redis dropped meanwhile, and
    /// tells the sockets of those it may not keep. Returns how many were put back.
    ///
    /// The limit holds: a session is put back only if no session in its pool was
    /// admitted since the outage began (before it the pool held this one too, and
    /// was within its limit); otherwise the newer session keeps the slot and this
    /// one's player is told EXPIRED. A session another socket now holds, or that
    /// ended (a take-over, an operator), is ended here as the check would.
    pub async fn reassert_after_outage(&self) -> Result<usize, StoreError> {
        let since_last = match self.vouching.lock() {
            Ok(v) if v.outage => v.last.map(|last| last.elapsed()),
            _ => return Ok(0),
        };
        // Only a node vouches (tests driving time hold sockets of no node).
        if self.node.is_none() || self.time != TimeSource::Redis {
            self.outage_over();
            return Ok(0);
        }
        let back_ms = since_last.map_or(u64::MAX / 4, |d| d.as_millis() as u64) + OUTAGE_MARGIN_MS;
        // By pool, oldest first: the oldest keep their slots if not all may come back.
        let mut by_pool: std::collections::HashMap<PoolKey, Vec<(Holder, Held)>> = std::collections::HashMap::new();
        for e in self.held.iter() {
            by_pool
                .entry(e.value().pool.clone())
                .or_default()
                .push((*e.key(), e.value().clone()));
        }
        let mut pools: Vec<Vec<(Holder, Held)>> = by_pool.into_values().collect();
        for sessions in &mut pools {
            sessions.sort_by_key(|(_, h)| (h.created_at, h.id.to_string()));
        }
        let (mut put_back, mut ended) = (0, 0);
        for chunk in pools.chunks(super::store::PIPELINE_CHUNK) {
            let mut pipe = redis::pipe();
            for sessions in chunk {
                let pool = &sessions[0].1.pool;
                let mut invocation = super::scripts::on_pool(&self.scripts.reassert, pool);
                invocation.arg(0).arg(back_ms);
                for (holder, h) in sessions {
                    let session = Session {
                        id: h.id,
                        name: h.name.clone(),
                        state: SessionState::Live,
                        expires_at: 0,
                        holder: Some(*holder),
                        created_at: h.created_at,
                    };
                    invocation
                        .key(keys::tombstone(pool, h.id))
                        .arg(h.id.to_string())
                        .arg(record::holder_arg(*holder))
                        .arg(record::encode(&session));
                }
                pipe.invoke_script(&invocation);
            }
            let replies = self.run_pipeline(&self.scripts.reassert, &pipe).await?;
            let mut index = redis::pipe();
            for (sessions, reply) in chunk.iter().zip(replies) {
                let codes: Vec<String> = redis::from_redis_value(reply)
                    .map_err(|e| StoreError::Unavailable(format!("unreadable re-assert reply: {e}")))?;
                for ((holder, h), code) in sessions.iter().zip(codes) {
                    let order = match code.as_str() {
                        "r" => continue,
                        "p" => {
                            put_back += 1;
                            self.index_in(&mut index, &h.pool, h.id);
                            continue;
                        }
                        "x" => Control::Terminate,
                        "f" => Control::Expire,
                        gone => match gone.strip_prefix("gT") {
                            Some(name) => Control::TakeOver {
                                session_name: name.to_owned(),
                            },
                            None => Control::Expire,
                        },
                    };
                    ended += 1;
                    self.release(*holder);
                    self.local.notify(*holder, order);
                }
            }
            if put_back > 0 {
                let mut conn = self.conn.clone();
                // Only operators' look-ups by id depend on the index.
                let _: Result<(), _> = index.query_async(&mut conn).await;
            }
        }
        self.outage_over();
        if put_back > 0 || ended > 0 {
            tracing::warn!(
                put_back,
                ended,
                outage_ms = back_ms - OUTAGE_MARGIN_MS,
                "Redis was unreachable: this node re-asserted its sessions"
            );
        }
        Ok(put_back)
    }

    fn outage_over(&self) {
        if let Ok(mut v) = self.vouching.lock() {
            v.outage = false;
            v.last = Some(Instant::now());
        }
    }

    /// Checks `batch` in one script call.
    async fn check(&self, batch: &[(Holder, Held, Millis)]) -> Result<Vec<CheckReply>, StoreError> {
        let now = batch.iter().map(|(_, _, now)| *now).max().unwrap_or(0);
        let mut invocation = self.scripts.check.prepare_invoke();
        invocation.arg(self.now_arg(now));
        for (holder, held, _) in batch {
            invocation
                .key(keys::pool(&held.pool))
                .key(keys::pools(&held.pool))
                .key(keys::tombstone(&held.pool, held.id))
                .arg(held.id.to_string())
                .arg(record::holder_arg(*holder));
        }
        let mut pipe = redis::pipe();
        pipe.invoke_script(&invocation);
        let mut replies = self.run_pipeline(&self.scripts.check, &pipe).await?;
        let reply = replies.pop().unwrap_or(Value::Nil);
        record::checks(reply, batch.len())
    }

    /// Restores this node's held sessions if Redis lost its data. Returns how many.
    ///
    /// The epoch key holds a random value set by whichever node first finds it
    /// missing; every node remembers the value it last saw, so each one notices a
    /// new epoch (Redis restarted empty) exactly once and puts its sessions back.
    pub(super) async fn restore_if_lost(&self) -> Result<usize, StoreError> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(keys::EPOCH)
            .arg(format!("{:016x}", rand::random::<u64>()))
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(keys::EPOCH);
        let (current,): (Option<String>,) = pipe.query_async(&mut conn).await.map_err(unavailable)?;
        let Some(current) = current else {
            return Ok(0);
        };
        match self.epoch.lock() {
            Ok(mut known) if known.as_deref() != Some(current.as_str()) => {
                // The first epoch a node sees is the one it started in: nothing was lost.
                if known.replace(current).is_none() {
                    return Ok(0);
                }
            }
            _ => return Ok(0),
        }
        let held: Vec<(Holder, Held)> = self.held.iter().map(|e| (*e.key(), e.value().clone())).collect();
        if held.is_empty() {
            return Ok(0);
        }
        let sessions = held
            .iter()
            .map(|(holder, h)| {
                let session = Session {
                    id: h.id,
                    name: h.name.clone(),
                    state: SessionState::Live,
                    expires_at: 0,
                    holder: Some(*holder),
                    created_at: h.created_at,
                };
                (h.pool.clone(), session)
            })
            .collect();
        self.restore(sessions).await?;
        tracing::warn!(
            restored = held.len(),
            "Redis had lost its data: this node's sessions are restored"
        );
        Ok(held.len())
    }
}
