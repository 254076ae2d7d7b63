//! The node's refresh loop: writes the PONGs queued since the last round in one
//! pipeline, tells sockets whose session turned out to be gone (the backstop for
//! lost orders), and puts this node's sessions back if Redis lost its data.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::keys::{self, node};
use super::record::{self, HeartbeatReply};
use super::scripts::on_pool;
use super::store::{Held, RedisStore, unavailable};
use crate::domain::ports::{Control, SessionStore, StoreError};
use crate::domain::{Holder, Millis, Session, SessionId, SessionState};

/// What one refresh round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    pub refreshed: usize,
    pub gone: usize,
    pub restored: usize,
}

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
    /// One refresh round.
    pub async fn refresh(&self) -> Result<Round, StoreError> {
        let mut round = Round {
            restored: self.restore_if_lost().await?,
            ..Round::default()
        };
        let batch: Vec<(Holder, (SessionId, Millis))> = match self.pending.lock() {
            Ok(mut pending) => pending.drain().collect(),
            Err(_) => Vec::new(),
        };
        let batch: Vec<(Holder, Held, Millis)> = batch
            .into_iter()
            .filter_map(|(holder, (id, now))| {
                let held = self.held.get(&holder)?.clone();
                (held.id == id).then_some((holder, held, now))
            })
            .collect();
        if batch.is_empty() {
            return Ok(round);
        }
        let replies = match self.heartbeats(&batch).await {
            Ok(replies) => replies,
            Err(e) => {
                // Put them back for the next round.
                if let Ok(mut pending) = self.pending.lock() {
                    for (holder, held, now) in &batch {
                        pending.entry(*holder).or_insert((held.id, *now));
                    }
                }
                return Err(e);
            }
        };
        for ((holder, _, _), reply) in batch.into_iter().zip(replies) {
            let order = match record::reply(&reply, "heartbeat") {
                Ok(HeartbeatReply::Refreshed) => {
                    round.refreshed += 1;
                    continue;
                }
                Ok(HeartbeatReply::Elsewhere) => Control::Terminate,
                Ok(HeartbeatReply::Gone { tombstone }) => match tombstone.strip_prefix('T') {
                    Some(name) => Control::TakeOver {
                        session_name: name.to_owned(),
                    },
                    None => Control::Expire,
                },
                Err(e) => {
                    // Its session is in an unknown state: keep the socket, and say
                    // so; its next PONG tries again.
                    tracing::error!(error = %e, "a session refresh could not be read");
                    continue;
                }
            };
            round.gone += 1;
            self.release(holder);
            self.local.notify(holder, order);
        }
        Ok(round)
    }

    async fn heartbeats(&self, batch: &[(Holder, Held, Millis)]) -> Result<Vec<Value>, StoreError> {
        let mut pipe = redis::pipe();
        for (holder, held, now) in batch {
            pipe.invoke_script(
                on_pool(&self.scripts.heartbeat, &held.pool)
                    .key(keys::tombstone(&held.pool, held.id))
                    .arg(self.now_arg(*now))
                    .arg(held.id.to_string())
                    .arg(holder.0.to_string()),
            );
        }
        self.run_pipeline(&self.scripts.heartbeat, &pipe).await
    }

    /// Restores this node's held sessions if Redis lost its data. Returns how many.
    ///
    /// The epoch key holds a random value set by whichever node first finds it
    /// missing; every node remembers the value it last saw, so each one notices a
    /// new epoch (Redis restarted empty) exactly once and puts its sessions back.
    async fn restore_if_lost(&self) -> Result<usize, StoreError> {
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
                    created_at: 0,
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
