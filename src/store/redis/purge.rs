//! The purge: the one walk over Redis that finds the sessions nobody ends.
//!
//! A node ends the sessions its own sockets hold, and reports their end. Three
//! kinds die inside Redis instead, with no node to end them: a session whose
//! node stopped (killed, or cut off from Redis for longer than its liveness
//! key), one granted and never connected, one detached and not back within the
//! grace. Their records stop counting at their deadline whatever happens; an
//! admission, a take-over or an attach of the same customer deletes them and
//! its node reports their `session.ended`. This loop is for the others: once per
//! `cluster.purge_interval`, one node (whichever takes the round's lease,
//! [`keys::PURGE_LEASE`]) walks every shard's index with the purge script,
//! which deletes the dead records it meets and names them, and reports each
//! end. A record is deleted by one script only, so its end is reported once
//! however many nodes purge; and a customer's hash outlives its last session by
//! `scripts::LINGER_MS`, more than two rounds, so none is dropped by Redis
//! before a round meets it.
//!
//! Cost: one script call per shard and round (more at a shard holding over
//! [`ENTRIES_PER_CALL`] sessions), spread over half the interval, whatever the
//! number of nodes; inside them, one `HGET` per session and one `HGETALL` per
//! index bucket, about 1.7 commands per session a round at 6,000 sessions
//! (`bench/analysis.md`, "The purge"). That is why a round is rare (every five
//! minutes by default): a session costs 0.35 commands a minute for it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::keys;
use super::record::{self, PurgeReply};
use super::store::{RedisStore, unavailable};
use crate::domain::events::SessionEvent;
use crate::domain::{Millis, SHARDS};

/// How many index entries one call of the purge script reads, at most (it stops
/// at the end of the bucket where it passes this): about a millisecond of
/// Redis's time, so the walk never holds Redis up for long.
pub const ENTRIES_PER_CALL: u32 = 512;

/// Runs a purge round every `every` on the node that takes the round's lease,
/// the first one interval after the node starts (a node that just started has
/// nothing of its own to find; the other nodes' rounds go on meanwhile).
pub async fn run(store: Arc<RedisStore>, node: u64, every: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {
                match store.purge_round(node, every, &cancel).await {
                    Ok(Some(ended)) if ended > 0 => tracing::info!(ended, "purge: dead sessions reported ended"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "purge round failed; the next one walks every shard again"),
                }
            }
        }
    }
}

impl RedisStore {
    /// One round, if this node takes its lease (`None`: another node has it):
    /// every shard purged, paced over half of `every`. Returns the sessions
    /// reported ended.
    pub async fn purge_round(
        &self,
        node: u64,
        every: Duration,
        cancel: &CancellationToken,
    ) -> Result<Option<usize>, crate::domain::ports::StoreError> {
        let mut conn = self.conn.clone();
        let taken: Option<String> = redis::cmd("SET")
            .arg(keys::PURGE_LEASE)
            .arg(format!("{node:x}"))
            .arg("NX")
            .arg("PX")
            .arg(u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if taken.is_none() {
            return Ok(None);
        }
        let pause = every / 2 / u32::from(SHARDS);
        let mut ended = 0;
        for shard in 0..SHARDS {
            ended += self.purge_shard(shard, 0).await?;
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
        Ok(Some(ended))
    }

    /// Deletes the dead records `shard`'s index names (dead at `now`, in the
    /// caller's clock when the store takes it, else Redis's), and reports each
    /// one's end. Returns how many.
    pub async fn purge_shard(&self, shard: u16, now: Millis) -> Result<usize, crate::domain::ports::StoreError> {
        let mut from = 0u8;
        let mut ended = 0;
        // Bounded: each call walks one bucket at least.
        for _ in 0..keys::INDEX_BUCKETS {
            let reply = self
                .run(
                    self.scripts
                        .purge
                        .key(keys::customer_prefix(shard))
                        .key(keys::index_prefix(shard))
                        .key(keys::alive_prefix(shard))
                        .arg(self.now_arg(now))
                        .arg("")
                        .arg(u32::from(from))
                        .arg(ENTRIES_PER_CALL),
                )
                .await?;
            let PurgeReply { next, gone } = record::reply(&reply, "purge")?;
            for swept in gone {
                let Some(pool) = keys::parse_customer_tag(&swept.tag, &swept.dead.offer) else {
                    tracing::warn!(
                        tag = swept.tag,
                        "purge: a dead session's customer is unreadable; not reported"
                    );
                    continue;
                };
                ended += 1;
                self.events.report(SessionEvent::ended(
                    &pool,
                    swept.dead.id,
                    Some(&swept.dead.name),
                    swept.dead.cause,
                ));
            }
            match next {
                Some(next) if next > from => from = next,
                _ => break,
            }
        }
        Ok(ended)
    }
}
