//! The node's refresh loop. Each round it vouches for the live sessions its
//! sockets hold (one key for all of them), writes the ends and detaches its
//! sockets queued, checks the held sessions that are due (a PONG heard, and the
//! last check a [`CHECK_EVERY_MS`] ago), tells the sockets whose session turned
//! out to be gone (the backstop for lost orders), and puts this node's sessions
//! back if Redis lost its data.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::keys::{self, node};
use super::record::{self, CheckReply};
use super::store::{CHECK_EVERY_MS, Held, RedisStore, TimeSource, unavailable};
use crate::domain::ports::{Control, SessionStore, StoreError};
use crate::domain::{Holder, Millis, Session, SessionId, SessionState};

/// What one refresh round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// Held sessions checked and found held by their socket.
    pub refreshed: usize,
    pub gone: usize,
    pub restored: usize,
    /// Queued ends and detaches written.
    pub written: usize,
}

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
                let mut conn = store.conn.clone();
                let _: Result<(), _> = redis::cmd("PEXPIRE")
                    .arg(node::lease(node))
                    .arg(node::LEASE_TTL_MS)
                    .query_async(&mut conn)
                    .await;
                if let Err(e) = store.refresh().await {
                    // Held sessions keep playing; their PONGs are retried next round.
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
        self.run_pipeline(&self.scripts.vouch, &pipe).await.map(drop)
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
