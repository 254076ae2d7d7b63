//! The node's refresh loop. Each round it vouches for the live sessions its
//! sockets hold (one key per shard it holds sessions in), writes the ends and
//! detaches its sockets queued, checks the held sessions that are due (a PONG
//! heard, and the last check a [`FULL_CHECK_EVERY_MS`] ago, or every one in a
//! shard whose vouch read the "moved" flag another node's script left there),
//! tells the sockets whose session turned out to be gone (the backstop for lost
//! orders), and puts this node's sessions back in a shard that lost its data
//! ([`RedisStore::restore_if_lost`]) or that another server answers for now (a
//! failover, which may have lost the last writes: `master_seen`). Every
//! pipeline holds one shard's keys.
//!
//! A store that stalls or is cut off from the node (a fork for a snapshot, a
//! network blip, a failover) for longer than the node's liveness keys live lets
//! them expire: the first script to touch a customer afterwards finds the node's
//! sessions there dead and deletes them, while their players go on answering
//! PINGs (which cost Redis nothing). So a round that reaches Redis after such a
//! gap vouches again in the shards concerned and re-asserts the sessions held
//! there ([`RedisStore::reassert_after_outage`]), and until it has, the node
//! admits no one there (503, as while Redis is unreachable).
//!
//! The outage is counted per shard, as vouching is: a shard whose vouch
//! failed is lost until a later vouch there goes through and the node's
//! sessions there are re-asserted; admissions in it wait meanwhile, the other
//! shards' go on (a Redis Cluster master that fails over stops only its own
//! shards). A round still unanswered after half a PONG timeout does not say
//! which shard stalls, nor does one that cannot renew the node's lease: every
//! shard the node holds sessions in counts as lost, and until a round reaches
//! Redis again the node admits no one, so that no admission waits in a stalled
//! server's socket to be carried out when it resumes. An admission in a lost
//! shard first vouches there and re-asserts the node's sessions itself, so no
//! newcomer takes their slots and none waits for the next round. A gap
//! between rounds that reached Redis longer than that (the node itself
//! stalled) counts every shard as lost too.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Value;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::keys::MOVED;
use super::keys::{self, node};
use super::record::{self, CheckReply};
use super::scripts::{EXTEND_MS, STALE_MS};
use super::store::{CHECK_EVERY_MS, Held, RedisStore, TimeSource, by_shard, new_epoch};
use crate::domain::clock::duration_ms;
use crate::domain::ports::{Control, SessionStore, StoreError};
use crate::domain::{Holder, Millis, PoolKey, Session, SessionId, SessionState};
use crate::telemetry::throttle::{self, Throttle};

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

/// The node's refresh rounds, as the outage detection sees them.
#[derive(Debug, Default)]
pub(crate) struct Vouching {
    /// When the last round reached Redis (`None`: not yet).
    last: Option<Instant>,
    /// A round was late or could not reach Redis, and none has reached it since:
    /// admissions wait.
    late: bool,
    /// Shards whose liveness keys may have expired (a vouch failed there, or a
    /// round was late), with when a vouch there last went through before: the
    /// node's sessions there are re-asserted once a vouch goes through again,
    /// and admissions there wait until then.
    lost: HashMap<u16, Option<Instant>>,
    /// Lost shards counted lost only because a round was late, came after a
    /// gap or could not renew the lease ([`RedisStore::suspect`]), not because
    /// a vouch of their own failed.
    suspected: HashSet<u16>,
    /// Suspected shards whose liveness key a vouch since found still there
    /// (`SET … XX` went through): it never ran out, so no script took this
    /// node's sessions there for dead, and nothing needs re-asserting.
    kept: HashSet<u16>,
    /// Shards where a vouch found this node's liveness key gone: every
    /// session the node holds there is checked this round, and the shard stays
    /// here until a check there went through.
    moved: BTreeSet<u16>,
    /// Shards (and nodes) where a vouch found the liveness key flagged
    /// ([`MOVED`]: a session held there was ended or moved by another node):
    /// the set of those sessions ([`keys::moved`]) is read this round.
    flagged: BTreeSet<(u16, u64)>,
}

/// The most ids one read of a node's set of moved sessions in a shard takes
/// (`SPOP` with a count: all of them, in practice).
const MOVED_POP: u64 = 1 << 30;

/// With Redis's clock, how often each held session is checked in full when no
/// vouch flags its shard (ten minutes; see [`RedisStore::refresh`]). A check
/// rewrites the record's own deadline once it is [`EXTEND_MS`] old, which must
/// happen well before it is [`STALE_MS`] old, even with a check that failed.
pub const FULL_CHECK_EVERY_MS: Millis = 600_000;
const _: () = assert!(EXTEND_MS + 2 * FULL_CHECK_EVERY_MS < STALE_MS);

/// A gap between rounds that reached Redis longer than this fraction of the
/// PONG timeout may have let a liveness key expire (one is rewritten every third
/// of a PONG timeout and lives a whole one): the held sessions are re-asserted.
const GAP_DIVISOR: u32 = 2;

/// Added to the outage's length when looking for sessions admitted during it,
/// so that clock steps and round trips only ever make the re-assertion more
/// careful (a session admitted just before the outage counts as newer).
const OUTAGE_MARGIN_MS: u64 = 1_000;

/// One pool's sessions held by this node's sockets.
type PoolSessions = Vec<(Holder, Held)>;

/// The most re-assertion scripts (one per pool) a refresh round sends: a
/// round that found many shards lost puts them back over several rounds,
/// the shards lost longest first, so that a Redis already slow is not sent
/// one script per held pool at once (which made the next rounds later still,
/// and every shard lost again). An admission in a lost shard does not wait
/// for its turn: it re-asserts that shard itself.
const REASSERT_PER_ROUND: usize = 2_000;

/// How many sessions one call of the check script takes.
const CHECK_CHUNK: usize = 250;

/// What a vouch (`SET … XX GET`) found: the key's old value, nil when it was gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vouch {
    /// Rewritten; nothing flagged.
    Kept,
    /// Rewritten, and it held [`MOVED`]: a session of this node's in the shard was
    /// ended or moved by another node (the scripts' `flag_moved`), and is
    /// named in the node's set of moved sessions there.
    Flagged,
    /// The key was gone (nothing was written).
    Gone,
}

/// (shard, node) pairs as each shard with its nodes, in shard order: one
/// pipeline per shard, since its keys share a slot.
fn nodes_by_shard(pairs: impl IntoIterator<Item = (u16, u64)>) -> Vec<(u16, Vec<u64>)> {
    by_shard(pairs, |(shard, _)| *shard)
        .into_iter()
        .map(|(shard, pairs)| (shard, pairs.into_iter().map(|(_, node)| node).collect()))
        .collect()
}

/// The vouch script's reply for `nodes` keys: what each key held, and which
/// server answered.
fn vouch_reply(mut replies: Vec<Value>, nodes: usize) -> Result<(Vec<Vouch>, String), StoreError> {
    let unreadable = |what: &dyn std::fmt::Debug| record::unreadable("vouch", format!("{what:?}"));
    let Some(Value::Array(mut values)) = replies.pop() else {
        return Err(unreadable(&replies));
    };
    if values.len() != nodes + 1 {
        return Err(unreadable(&values));
    }
    let server = match values.pop() {
        Some(Value::BulkString(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        other => return Err(unreadable(&other)),
    };
    let vouches = values
        .iter()
        .map(|old| match old {
            Value::BulkString(old) if old.is_empty() => Vouch::Gone,
            old => vouch_of(old),
        })
        .collect();
    Ok((vouches, server))
}

fn vouch_of(reply: &Value) -> Vouch {
    match reply {
        Value::BulkString(old) if old.as_slice() == MOVED.as_bytes() => Vouch::Flagged,
        Value::BulkString(_) | Value::SimpleString(_) | Value::Okay => Vouch::Kept,
        _ => Vouch::Gone,
    }
}

const REFRESH_FAILED_LINE: &str = "session refresh failed; retrying each round \
     (one line per 10 s at most, with the count since the last; each at debug)";

/// Refreshes every `every`, and keeps node `node`'s claim on its id alive.
pub async fn run(store: Arc<RedisStore>, node: u64, every: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Every round fails while Redis is down: a line per 10 s with the count,
    // the first of an outage's with its error, not one a round.
    let failed = Throttle::new(throttle::EVERY, |rounds| {
        tracing::warn!(rounds, "{REFRESH_FAILED_LINE}");
    });
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                let round = async {
                    let mut conn = store.conn.clone();
                    let lease = redis::cmd("PEXPIRE")
                        .arg(node::lease(node))
                        .arg(node::LEASE_TTL_MS)
                        .query_async::<()>(&mut conn)
                        .await;
                    if let Err(e) = lease {
                        // Redis out of reach (on a cluster, the lease's master): as late.
                        store.note_late();
                        return Err(super::store::unavailable(e));
                    }
                    store.reached(Instant::now());
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
                        store.note_late();
                        round.await
                    }
                };
                if let Err(e) = result {
                    // Held sessions keep playing; their PONGs are retried next round. A
                    // shard whose vouch failed was marked lost by the vouch itself.
                    tracing::debug!(error = %e, "session refresh failed; retrying");
                    if let Some(rounds) = failed.hit() {
                        tracing::warn!(rounds, error = %e, "{REFRESH_FAILED_LINE}");
                    }
                }
            }
        }
    }
}

impl RedisStore {
    /// One refresh round.
    pub async fn refresh(&self) -> Result<Round, StoreError> {
        let heard: Vec<(Holder, (SessionId, Millis))> = match self.pending.lock() {
            Ok(mut pending) => pending.drain().collect(),
            Err(_) => Vec::new(),
        };
        let mut round = Round::default();
        match self.vouch(&heard).await {
            Ok(restored) => round.restored = restored,
            Err(e) => {
                self.pending_again(&heard);
                // The shards whose vouch went through are re-asserted all the same.
                let _ = self.reassert_after_outage().await;
                return Err(e);
            }
        }
        round.reasserted = self.reassert_after_outage().await?;
        round.written = self.write_queued(|_| true).await?;
        // Due: the first PONG since the socket attached, then one a period: a
        // minute with the caller's clock, ten with Redis's, where a vouch that
        // finds its key flagged has every session of the shard checked at once
        // (`moved_due`).
        let every = self.check_every();
        let mut due: Vec<(Holder, Held, Millis)> = heard
            .iter()
            .filter_map(|(holder, (id, now))| {
                let mut held = self.held.get_mut(holder)?;
                if held.id != *id || held.checked_at.is_some_and(|at| *now < at + every) {
                    return None;
                }
                held.checked_at = Some(*now);
                Some((*holder, held.clone(), *now))
            })
            .collect();
        let popped = self.pop_moved().await;
        let moved = self.moved_due(&heard, &popped, &mut due);
        self.join_due(&mut due, every);
        let batches: Vec<Vec<(Holder, Held, Millis)>> = by_shard(due, |(_, held, _)| held.pool.shard())
            .into_values()
            .flat_map(|group| group.chunks(CHECK_CHUNK).map(<[_]>::to_vec).collect::<Vec<_>>())
            .collect();
        let pipes: Vec<redis::Pipeline> = batches.iter().map(|batch| self.check_pipe(batch)).collect();
        let results = self.run_pipelines(&[&self.scripts.check], &pipes).await;
        let mut failed = None;
        let mut unchecked = BTreeSet::new();
        for (batch, result) in batches.iter().zip(results) {
            let reply = result.map(|mut replies| replies.pop().unwrap_or(Value::Nil));
            // The shard lost its data: put this node's sessions back rather than
            // tell their sockets they ended; they are checked at their next PONG.
            if let Ok(Value::BulkString(text)) = &reply
                && let Some(epoch) = text.strip_prefix(b"lost|")
            {
                let shard = batch.first().map_or(0, |(_, held, _)| held.pool.shard());
                for (holder, _, _) in batch {
                    if let Some(mut held) = self.held.get_mut(holder) {
                        held.checked_at = None;
                    }
                }
                round.restored += self.restore_if_lost(shard, &String::from_utf8_lossy(epoch)).await?;
                continue;
            }
            let replies = match reply.and_then(|reply| record::checks(reply, batch.len())) {
                Ok(replies) => replies,
                Err(e) => {
                    // Checked again at their next PONG; a flagged shard, next round.
                    for (holder, _, _) in batch {
                        if let Some(mut held) = self.held.get_mut(holder) {
                            held.checked_at = None;
                        }
                    }
                    unchecked.insert(batch.first().map_or(0, |(_, held, _)| held.pool.shard()));
                    failed = Some(e);
                    continue;
                }
            };
            for ((holder, held, _), reply) in batch.iter().zip(replies) {
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
                // Told once: a re-assertion running beside this round may have
                // ended it and told its socket already.
                if self.release_held(*holder, held.id) {
                    self.local.notify(*holder, order);
                }
            }
        }
        // The flagged shards checked (or where this node holds nothing now);
        // the others stay flagged for the next round, as does every one if
        // this round stopped early.
        if let Ok(mut v) = self.vouching.lock() {
            v.moved
                .retain(|shard| !moved.contains(shard) || unchecked.contains(shard));
        }
        failed.map_or(Ok(round), Err)
    }

    /// How often each held session is checked in full when nothing flags its
    /// shard. With Redis's clock, [`FULL_CHECK_EVERY_MS`]: the check's other
    /// duty, noticing a session another node ended or moved when the order to
    /// this node was lost, is done by the flag each vouch reads (the scripts'
    /// `flag_moved`), so a quiet shard costs no command per session and minute.
    /// With the caller's clock (tests) the liveness keys hold deadlines, which
    /// are never flagged: [`CHECK_EVERY_MS`], as before.
    fn check_every(&self) -> Millis {
        match self.time {
            TimeSource::Redis => FULL_CHECK_EVERY_MS,
            TimeSource::Caller => CHECK_EVERY_MS,
        }
    }

    /// Remembers `shards` as to be checked in full at the next round (a vouch
    /// found the key gone, or the set of moved sessions could not be read).
    fn check_all_in(&self, shards: impl IntoIterator<Item = u16>) {
        if let Ok(mut v) = self.vouching.lock() {
            v.moved.extend(shards);
        }
    }

    /// Reads (and empties, `SPOP`) the sets of moved sessions where a vouch
    /// found the key flagged: the compact ids of the sessions to check now. A
    /// shard whose set cannot be read is checked in full.
    ///
    /// Why a moved session is never missed: a vouch is one `SET … XX GET`, so
    /// reading the flag and writing `r` over it are one atomic step, and a
    /// script adds the id to the set and flags the key in one atomic step too.
    /// A script that runs after the vouch leaves the flag for the next vouch,
    /// one vouch period later (a third of a PONG timeout), and its id in the
    /// set: popped now or then (a session popped now is checked again then,
    /// found gone again, harmlessly). One that ran before the vouch was read by
    /// it and its id is popped here. The flag and the set are lost only with
    /// the key (it ran out, or the shard lost its data: the set lives no longer
    /// than the key), and then the vouch answers nil and every session the node
    /// holds in the shard is checked (and the outage or the epoch's change
    /// re-asserts or restores them).
    async fn pop_moved(&self) -> HashSet<String> {
        let flagged: Vec<(u16, u64)> = match self.vouching.lock() {
            Ok(mut v) => std::mem::take(&mut v.flagged).into_iter().collect(),
            Err(_) => return HashSet::new(),
        };
        if flagged.is_empty() {
            return HashSet::new();
        }
        let shards = nodes_by_shard(flagged);
        let pipes: Vec<redis::Pipeline> = shards
            .iter()
            .map(|(shard, nodes)| {
                let mut pipe = redis::pipe();
                for node in nodes {
                    pipe.cmd("SPOP").arg(keys::moved(*shard, *node)).arg(MOVED_POP);
                }
                pipe
            })
            .collect();
        let results = self.run_pipelines(&[], &pipes).await;
        let mut ids = HashSet::new();
        for ((shard, _), result) in shards.iter().zip(results) {
            let popped: Result<Vec<Vec<String>>, _> = result.and_then(|replies| {
                redis::from_redis_value(Value::Array(replies)).map_err(|e| record::unreadable("moved", e))
            });
            match popped {
                Ok(sets) => ids.extend(sets.into_iter().flatten()),
                Err(_) => self.check_all_in([*shard]),
            }
        }
        ids
    }

    /// Adds to `due` every session this node holds in a shard a vouch found
    /// its key gone in, and every one named in `popped` (another node ended or
    /// moved it: [`Self::pop_moved`]), whatever its last check. Returns the
    /// shards checked in full; each stays to be checked in full until its check
    /// went through (see the end of [`Self::refresh`]).
    fn moved_due(
        &self,
        heard: &[(Holder, (SessionId, Millis))],
        popped: &HashSet<String>,
        due: &mut Vec<(Holder, Held, Millis)>,
    ) -> BTreeSet<u16> {
        let moved = match self.vouching.lock() {
            Ok(v) => v.moved.clone(),
            Err(_) => return BTreeSet::new(),
        };
        if moved.is_empty() && popped.is_empty() {
            return moved;
        }
        let now = heard
            .iter()
            .map(|(_, (_, now))| *now)
            .max()
            .unwrap_or_else(|| crate::domain::Clock::new().now());
        let already: HashSet<Holder> = due.iter().map(|(holder, _, _)| *holder).collect();
        for mut entry in self.held.iter_mut() {
            let holder = *entry.key();
            let held = entry.value_mut();
            let named = !popped.is_empty() && popped.contains(&record::id_arg(held.id));
            if (named || moved.contains(&held.pool.shard())) && !already.contains(&holder) {
                // A named session's id was popped: should this round's reply be
                // lost, its next PONG checks it again (it is gone from the set).
                held.checked_at = if named { None } else { Some(now) };
                due.push((holder, held.clone(), now));
            }
        }
        moved
    }

    /// Adds to `due` the other sessions this node holds in the same shards
    /// whose last check is at least half a period (`every`) old: a check
    /// call costs a few commands whatever its size, and each session's PONGs
    /// come at their own times, so without this each call would check one
    /// session; with it, a shard's sessions fall into step within a minute or
    /// two and are checked together, each at most twice as often as due.
    fn join_due(&self, due: &mut Vec<(Holder, Held, Millis)>, every: Millis) {
        let mut shards: HashMap<u16, Millis> = HashMap::new();
        for (_, held, now) in due.iter() {
            let at = shards.entry(held.pool.shard()).or_default();
            *at = (*at).max(*now);
        }
        if shards.is_empty() {
            return;
        }
        let already: HashSet<Holder> = due.iter().map(|(holder, _, _)| *holder).collect();
        for mut entry in self.held.iter_mut() {
            let holder = *entry.key();
            let held = entry.value_mut();
            let Some(now) = shards.get(&held.pool.shard()).copied() else {
                continue;
            };
            let old_enough = held.checked_at.is_some_and(|at| now >= at + every / 2);
            if old_enough && !already.contains(&holder) {
                held.checked_at = Some(now);
                due.push((holder, held.clone(), now));
            }
        }
    }

    fn pending_again(&self, heard: &[(Holder, (SessionId, Millis))]) {
        if let Ok(mut pending) = self.pending.lock() {
            for (holder, beat) in heard {
                pending.entry(*holder).or_insert(*beat);
            }
        }
    }

    /// Vouches for this node's live sessions in each shard it holds sessions
    /// in (its liveness key there lives one more PONG timeout), and notices a
    /// shard that lost its data, restoring this node's sessions there. Returns
    /// how many were restored.
    ///
    /// One command a shard while nothing is amiss: the liveness key is
    /// rewritten only if it is still there (`SET … XX`). A shard that lost its
    /// data (restarted empty, or a master that failed over to a replica that
    /// never had the key) has lost that key too, since only this node writes
    /// it; so does a shard where the key ran out (a stall, or the node's first
    /// vouch there). Only then is the shard's epoch read, with the key set
    /// again (two commands, as every vouch cost before), and the sessions
    /// restored if the epoch changed. The key living a whole PONG timeout
    /// while it is rewritten every third of one, a key that ran out means the
    /// node could not vouch for longer than that, which the outage detection
    /// ([`Self::reached`], [`Self::note_late`]) already treats as lost.
    ///
    /// Once a PONG timeout in each shard the vouch is a script that also names
    /// the server answering (see [`Self::master_seen`]): another one than before
    /// counts the shard lost, and its sessions are re-asserted.
    ///
    /// With Redis's clock, a shard's key is rewritten once a third of the PONG
    /// timeout (or every round, if rounds are slower): it then always lives two
    /// thirds of a PONG timeout more, and a node costs each shard a few writes a
    /// minute, not one a round; the key holds `r` and the scripts read its TTL,
    /// so no node's clock is involved. With the caller's clock (tests), the key
    /// holds the latest PONG heard plus a PONG timeout, every held shard is
    /// vouched for each round, and a round that heard none only reads the epochs.
    async fn vouch(&self, heard: &[(Holder, (SessionId, Millis))]) -> Result<usize, StoreError> {
        let until = match self.time {
            TimeSource::Redis => Some("r".to_owned()),
            TimeSource::Caller => heard
                .iter()
                .map(|(_, (_, now))| *now)
                .max()
                .map(|now| (now + duration_ms(self.pong_timeout())).to_string()),
        };
        // Every socket of a node names it; tests hold sockets of node 0.
        let mut wanted: BTreeSet<(u16, u64)> = self
            .held
            .iter()
            .map(|e| (e.value().pool.shard(), self.node.unwrap_or_else(|| e.key().node())))
            .collect();
        if self.time == TimeSource::Redis {
            let every = (self.pong_timeout() / 3).max(Duration::from_millis(1));
            let at = Instant::now();
            // A lost shard has no entry (see `lose`): vouched for at once.
            if let Ok(vouched) = self.vouched.lock() {
                wanted.retain(|(shard, _)| vouched.get(shard).is_none_or(|last| at.duration_since(*last) >= every));
            }
        }
        if wanted.is_empty() {
            return Ok(0);
        }
        // One pipeline per shard: its keys share a slot.
        let mut shards = nodes_by_shard(wanted);
        let pong_ms = duration_ms(self.pong_timeout()).max(1);
        let mut failed = None;
        // Shards a new server answered in whose liveness key was gone: settled
        // once the epoch was read (a shard that came back empty is restored).
        let mut changed: HashMap<u16, (String, Instant)> = HashMap::new();
        let sent = Instant::now();
        if let Some(until) = &until {
            // The rewrite alone, where every key is still there, reading back
            // the old value ([`MOVED`] if a script flagged it: see `moved_due`);
            // once a PONG timeout, as a script that also names the server that
            // answered (see `master_seen`). One command a shard, or one script.
            let probe_every = self.pong_timeout();
            let probing: Vec<bool> = shards
                .iter()
                .map(|(shard, _)| self.probe_due(*shard, sent, probe_every))
                .collect();
            let pipes: Vec<redis::Pipeline> = shards
                .iter()
                .zip(&probing)
                .map(|((shard, nodes), probe)| {
                    let mut pipe = redis::pipe();
                    if *probe {
                        let mut invocation = self.scripts.vouch.prepare_invoke();
                        for node in nodes {
                            invocation.key(keys::alive(*shard, *node));
                        }
                        invocation.arg(until).arg(pong_ms);
                        pipe.invoke_script(&invocation);
                    } else {
                        for node in nodes {
                            set_alive(&mut pipe, *shard, *node, until, pong_ms).arg("XX").arg("GET");
                        }
                    }
                    pipe
                })
                .collect();
            let results = self.run_pipelines(&[&self.scripts.vouch], &pipes).await;
            let mut again = Vec::new();
            let flags = self.time == TimeSource::Redis;
            for (((shard, nodes), result), probe) in shards.into_iter().zip(results).zip(probing) {
                let reply = result.and_then(|replies| match probe {
                    true => vouch_reply(replies, nodes.len()).map(|(vouches, server)| (vouches, Some(server))),
                    false if replies.len() == nodes.len() => Ok((replies.iter().map(vouch_of).collect(), None)),
                    false => Ok((vec![Vouch::Gone], None)),
                });
                if flags && let Ok((vouches, _)) = &reply {
                    if vouches.contains(&Vouch::Gone) {
                        self.check_all_in([shard]);
                    }
                    if let Ok(mut v) = self.vouching.lock() {
                        for (node, vouch) in nodes.iter().zip(vouches) {
                            if *vouch == Vouch::Flagged {
                                v.flagged.insert((shard, *node));
                            }
                        }
                    }
                }
                match reply {
                    Ok((vouches, server)) => {
                        let before = server.as_ref().and_then(|server| self.master_seen(shard, server, sent));
                        let server = server.unwrap_or_default();
                        if vouches.contains(&Vouch::Gone) {
                            // A key was gone: read the epoch, and set the key again.
                            if let Some(last) = before {
                                changed.insert(shard, (server, last));
                            }
                            again.push((shard, nodes));
                        } else {
                            self.vouched_kept(shard);
                            if let Some(last) = before {
                                self.master_changed(shard, last);
                                self.learn_master(shard, server, sent);
                            }
                        }
                    }
                    Err(e) => {
                        // Its liveness key may run out before a vouch goes through.
                        self.lose([shard]);
                        failed = Some(e);
                    }
                }
            }
            shards = again;
        }
        let candidates: Vec<String> = shards.iter().map(|_| new_epoch()).collect();
        let pipes: Vec<redis::Pipeline> = shards
            .iter()
            .zip(&candidates)
            .map(|((shard, nodes), candidate)| {
                let mut pipe = redis::pipe();
                if let Some(until) = &until {
                    for node in nodes {
                        // Not ignored: a pipeline sent one command at a time while its
                        // slot moves returns every reply (`query_pipeline`); the epoch's is
                        // the last either way.
                        set_alive(&mut pipe, *shard, *node, until, pong_ms);
                    }
                }
                // The epoch, set first by whoever finds none (NX), read back (GET:
                // nil when this call set it).
                pipe.cmd("SET")
                    .arg(keys::epoch(*shard))
                    .arg(candidate)
                    .arg("NX")
                    .arg("GET");
                pipe
            })
            .collect();
        let results = self.run_pipelines(&[], &pipes).await;
        let mut restored = 0;
        for (((shard, _), candidate), result) in shards.iter().zip(candidates).zip(results) {
            let epoch = match result.map(|mut replies| replies.pop()) {
                Ok(Some(Value::BulkString(bytes))) => String::from_utf8_lossy(&bytes).into_owned(),
                // Set by this call: the value it sent.
                Ok(Some(Value::Nil)) => candidate,
                Ok(other) => {
                    self.lose([*shard]);
                    failed = Some(record::unreadable("epoch", format!("{other:?}")));
                    continue;
                }
                Err(e) => {
                    // Its liveness key may run out before a vouch goes through.
                    self.lose([*shard]);
                    failed = Some(e);
                    continue;
                }
            };
            if until.is_some() {
                self.vouched_now(*shard);
            }
            // A new epoch: the shard came back empty, and every session is
            // restored here; no re-assertion is needed on top.
            let known = self.known_epoch(*shard);
            let emptied = !known.is_empty() && known != epoch;
            restored += self.restore_if_lost(*shard, &epoch).await?;
            if let Some((server, last)) = changed.remove(shard) {
                if !emptied {
                    self.master_changed(*shard, last);
                }
                self.learn_master(*shard, server, sent);
            }
        }
        failed.map_or(Ok(restored), Err)
    }

    /// Notes which server answered a vouch in `shard` sent at `sent`, as the
    /// vouch script names it (its `run_id` and `master_replid`). Returns when
    /// the server that answered before last did, if it was another one: a
    /// failover, or a restart, that may have lost the last writes there.
    ///
    /// Why this, and not the shard's keys: a replica promoted while it lagged
    /// behind its master lacks that master's last writes, yet still holds the
    /// epoch and the node's liveness key whenever they were written earlier, so
    /// nothing in the data says which sessions were lost. The server's identity
    /// changes with every promotion and every restart. The first server a node
    /// sees in a shard is the one it started with: nothing was lost. The new
    /// one is only learned once the shard is counted lost ([`Self::learn_master`]):
    /// a round stopped early notices the change again.
    fn master_seen(&self, shard: u16, server: &str, sent: Instant) -> Option<Instant> {
        let Ok(mut masters) = self.masters.lock() else {
            return None;
        };
        match masters.get_mut(&shard) {
            None => {
                masters.insert(shard, (server.to_owned(), sent));
                None
            }
            Some((known, at)) if known == server => {
                *at = sent;
                None
            }
            Some((_, at)) => Some(*at),
        }
    }

    /// Whether this node's vouch in `shard` sent at `sent` should name the
    /// server that answers: when none did in the last `every` (a PONG
    /// timeout: every third vouch). A vouch that names it costs three
    /// commands (the script, its `SET` and `INFO`) where a plain one costs
    /// one; so a shard's master change is noticed within a PONG timeout and a
    /// vouch period, for about two thirds more vouching commands, not three
    /// times as many.
    fn probe_due(&self, shard: u16, sent: Instant, every: Duration) -> bool {
        self.masters
            .lock()
            .map(|masters| {
                masters
                    .get(&shard)
                    .is_none_or(|(_, at)| sent.saturating_duration_since(*at) >= every)
            })
            .unwrap_or(true)
    }

    fn learn_master(&self, shard: u16, server: String, sent: Instant) {
        if let Ok(mut masters) = self.masters.lock() {
            masters.insert(shard, (server, sent));
        }
    }

    /// Another server answers for `shard` than the one a vouch last reached at
    /// `last`: counts it lost since then, whatever its liveness key says, so
    /// that this round re-asserts the node's sessions there
    /// ([`Self::reassert_after_outage`]: those missing are put back, within the
    /// limit, counting the sessions admitted since `last` as newer) and
    /// admissions there wait for it. The promotion came after `last`: the old
    /// server still answered then.
    fn master_changed(&self, shard: u16, last: Instant) {
        if self.node.is_none() || self.time != TimeSource::Redis {
            return;
        }
        if let Ok(mut v) = self.vouching.lock() {
            let since = v.lost.entry(shard).or_insert(Some(last));
            if since.is_some_and(|at| last < at) {
                *since = Some(last);
            }
            // Not a suspicion its key can clear: the key may have survived the writes lost.
            v.suspected.remove(&shard);
            v.kept.remove(&shard);
        }
        tracing::warn!(
            shard,
            "another Redis server answers for this shard (a failover or a restart, which may have lost \
             the last writes): this node re-asserts its sessions there"
        );
    }

    /// Notes a vouch in `shard` that went through (with Redis's clock: the
    /// next is due a third of a PONG timeout later).
    fn vouched_now(&self, shard: u16) {
        if self.time == TimeSource::Redis
            && let Ok(mut vouched) = self.vouched.lock()
        {
            vouched.insert(shard, Instant::now());
        }
    }

    /// Notes a vouch in `shard` that found the node's liveness key still there
    /// (`SET … XX`): if the shard was only suspected lost, nothing was.
    fn vouched_kept(&self, shard: u16) {
        self.vouched_now(shard);
        if let Ok(mut v) = self.vouching.lock()
            && v.suspected.contains(&shard)
        {
            v.kept.insert(shard);
        }
    }

    /// Notes a round that reached Redis at `at`: one that comes more than a
    /// fraction of the PONG timeout after the last means the node's keys may
    /// have run out in every shard.
    pub(super) fn reached(&self, at: Instant) {
        let gap = match self.vouching.lock() {
            Ok(mut v) => {
                let limit = self.timings.pong_timeout / GAP_DIVISOR;
                let gap = v.last.is_some_and(|last| at.duration_since(last) > limit);
                v.last = Some(at);
                v.late = false;
                gap
            }
            Err(_) => false,
        };
        if gap {
            self.suspect(self.held_shards());
        }
    }

    /// Whether this node's liveness key in `shard` may have run out, so that
    /// another node may have found its sessions there dead and reported their
    /// end (`node_lost`): the shard counts as lost, or its last vouch is older
    /// than a fraction of the PONG timeout. The second is what a node that was
    /// frozen (SIGSTOP, a paused VM) knows first: a socket's PONG deadline can
    /// fire before the next round notices the gap.
    pub(super) fn may_have_lost(&self, shard: u16) -> bool {
        if self.node.is_none() || self.time != TimeSource::Redis {
            return false;
        }
        if self.vouching.lock().is_ok_and(|v| v.lost.contains_key(&shard)) {
            return true;
        }
        let limit = self.timings.pong_timeout / GAP_DIVISOR;
        self.vouched
            .lock()
            .is_ok_and(|vouched| vouched.get(&shard).is_some_and(|at| at.elapsed() > limit))
    }

    /// A refresh round is late, or could not reach Redis at all: Redis may be
    /// stalled or out of reach, and every shard's keys may run out. Until a
    /// round reaches Redis again ([`Self::reached`]) the node admits no one;
    /// then each lost shard is re-asserted by the round, or first by the next
    /// admission there.
    pub(super) fn note_late(&self) {
        self.suspect(self.held_shards());
        if let Ok(mut v) = self.vouching.lock()
            && self.node.is_some()
        {
            v.late = true;
        }
    }

    /// The shards this node's sockets hold sessions in.
    fn held_shards(&self) -> BTreeSet<u16> {
        self.held.iter().map(|e| e.value().pool.shard()).collect()
    }

    /// Counts `shards` as lost (their liveness keys may expire before a vouch
    /// there goes through): forgets their last vouch, so the next round vouches
    /// there at once, and remembers it as when the outage may have begun.
    pub(super) fn lose(&self, shards: impl IntoIterator<Item = u16>) {
        self.count_lost(shards, false);
    }

    /// Counts `shards` as lost on suspicion alone (a round late, a gap between
    /// rounds, a lease not renewed: Redis slow or stalled, which says nothing
    /// of any one shard): as [`Self::lose`], except that a shard whose next
    /// vouch finds the liveness key still there lost nothing and is not
    /// re-asserted ([`Self::vouched_kept`]). A shard lost by a vouch of its
    /// own that failed stays lost until re-asserted.
    fn suspect(&self, shards: impl IntoIterator<Item = u16>) {
        self.count_lost(shards, true);
    }

    fn count_lost(&self, shards: impl IntoIterator<Item = u16>, suspicion: bool) {
        // Only a node vouches (tests driving time hold sockets of no node).
        if self.node.is_none() || self.time != TimeSource::Redis {
            return;
        }
        let (Ok(mut vouched), Ok(mut v)) = (self.vouched.lock(), self.vouching.lock()) else {
            return;
        };
        let fallback = v.last;
        for shard in shards {
            let last = vouched.remove(&shard).or(fallback);
            if !suspicion {
                v.lost.entry(shard).or_insert(last);
                v.suspected.remove(&shard);
            } else if let std::collections::hash_map::Entry::Vacant(entry) = v.lost.entry(shard) {
                entry.insert(last);
                v.suspected.insert(shard);
            }
            // Its next vouch says again whether the key is still there.
            v.kept.remove(&shard);
        }
    }

    /// Before an admission (or take-over) in `shard`: refuses every one while a
    /// round is late, and in a shard where this node's held sessions may be
    /// missing from Redis first vouches there and puts them back
    /// ([`Self::reassert_after_outage`]): a newcomer admitted first could take
    /// their slots. Refused if that fails.
    pub(super) async fn admitting(&self, shard: u16) -> Result<(), StoreError> {
        let unavailable =
            || StoreError::Unavailable("Redis was unreachable; this node is re-asserting its sessions".into());
        let lost = match self.vouching.lock() {
            Ok(v) if v.late => return Err(unavailable()),
            Ok(v) => v.lost.contains_key(&shard),
            Err(_) => false,
        };
        let Some(node) = self.node.filter(|_| lost) else {
            return Ok(());
        };
        // The key set again, and what it held (nil: it had run out).
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(keys::alive(shard, node))
            .arg("r")
            .arg("PX")
            .arg(duration_ms(self.pong_timeout()).max(1))
            .arg("GET");
        let before = self.run_pipeline_of(&[], &pipe).await?;
        match before.first().map_or(Vouch::Gone, vouch_of) {
            Vouch::Gone => self.vouched_now(shard),
            Vouch::Kept => self.vouched_kept(shard),
            // Writing `r` took the flag away: its moved sessions are read this
            // round, as the round's own vouch would have had them read.
            Vouch::Flagged => {
                self.vouched_kept(shard);
                if self.time == TimeSource::Redis
                    && let Ok(mut v) = self.vouching.lock()
                {
                    v.flagged.insert((shard, node));
                }
            }
        }
        if let Ok(mut vouched) = self.vouched.lock() {
            vouched.insert(shard, Instant::now());
        }
        // This shard alone, whatever the round's pace: the admission waits on it.
        let _ = self.reassert(Some(shard)).await;
        match self.vouching.lock() {
            Ok(v) if v.lost.contains_key(&shard) => Err(unavailable()),
            _ => Ok(()),
        }
    }

    /// After an outage in some shards (a vouch there failed, or a round came
    /// too late), once a vouch there went through again: puts back every
    /// session this node's sockets hold there that Redis dropped meanwhile, and
    /// tells the sockets of those it may not keep. Returns how many were put
    /// back. One script call per pool (a customer's offer), pipelined per shard.
    ///
    /// The limit holds: as many of a pool's missing sessions come back as are
    /// missing, less one for each session admitted into the pool since the
    /// outage began (before it the pool held all of them within its limit); the
    /// oldest come back first, and the others' players are told EXPIRED. A
    /// session another socket now holds, or that ended (a take-over, an
    /// operator), is ended here as the check would.
    ///
    /// Proportional: a shard only suspected lost (a late round) whose vouch
    /// since found the node's liveness key still there lost nothing and costs
    /// no script; the others are re-asserted at most [`REASSERT_PER_ROUND`]
    /// scripts a call, the shards lost longest first.
    pub async fn reassert_after_outage(&self) -> Result<usize, StoreError> {
        self.reassert(None).await
    }

    /// [`Self::reassert_after_outage`] for every lost shard ready (`None`,
    /// paced), or for `only` that one (an admission there waits on it).
    async fn reassert(&self, only: Option<u16>) -> Result<usize, StoreError> {
        // The lost shards a vouch went through again since (see `lose`), and how
        // far back (ms) the outage there may have begun. Those only suspected
        // whose key was still there are done with at once.
        let ready: HashMap<u16, u64> = {
            let (Ok(vouched), Ok(mut v)) = (self.vouched.lock(), self.vouching.lock()) else {
                return Ok(0);
            };
            let kept: Vec<u16> = v
                .kept
                .iter()
                .copied()
                .filter(|shard| only.is_none_or(|only| only == *shard))
                .collect();
            for shard in &kept {
                v.lost.remove(shard);
                v.suspected.remove(shard);
                v.kept.remove(shard);
            }
            if !kept.is_empty() {
                tracing::debug!(
                    shards = kept.len(),
                    "a late refresh round lost nothing where the liveness keys were still there"
                );
            }
            v.lost
                .iter()
                .filter(|(shard, _)| vouched.contains_key(shard) && only.is_none_or(|only| only == **shard))
                .map(|(shard, last)| {
                    let back = last.map_or(u64::MAX / 4, |at| at.elapsed().as_millis() as u64);
                    (*shard, back.saturating_add(OUTAGE_MARGIN_MS))
                })
                .collect()
        };
        if ready.is_empty() {
            return Ok(0);
        }
        // By pool, oldest first: the oldest keep their slots if not all may come back.
        let mut by_pool: HashMap<PoolKey, Vec<(Holder, Held)>> = HashMap::new();
        for e in self.held.iter() {
            if ready.contains_key(&e.value().pool.shard()) {
                by_pool
                    .entry(e.value().pool.clone())
                    .or_default()
                    .push((*e.key(), e.value().clone()));
            }
        }
        // Paced: the shards lost longest first, up to the round's budget of
        // scripts (at least one shard, whatever its size). The rest stay lost,
        // for the next round or an admission there.
        let ready = {
            let mut pools_in: HashMap<u16, usize> = HashMap::new();
            for pool in by_pool.keys() {
                *pools_in.entry(pool.shard()).or_default() += 1;
            }
            pace(ready, &pools_in, REASSERT_PER_ROUND)
        };
        by_pool.retain(|pool, _| ready.contains_key(&pool.shard()));
        let mut pools: Vec<PoolSessions> = by_pool.into_values().collect();
        for sessions in &mut pools {
            sessions.sort_by_key(|(_, h)| (h.created_at, record::id_arg(h.id)));
        }
        // A pipeline per shard (and thousand pools): its keys share a slot.
        let batches: Vec<(u16, Vec<PoolSessions>)> = by_shard(pools, |sessions| sessions[0].1.pool.shard())
            .into_iter()
            .flat_map(|(shard, group)| {
                group
                    .chunks(super::store::PIPELINE_CHUNK)
                    .map(|chunk| (shard, chunk.to_vec()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let pipes: Vec<redis::Pipeline> = batches
            .iter()
            .map(|(shard, batch)| {
                let mut pipe = redis::pipe();
                for sessions in batch {
                    let pool = &sessions[0].1.pool;
                    let mut invocation = super::scripts::on_pool(&self.scripts.reassert, pool, 0);
                    invocation.arg(ready[shard]).arg(keys::customer_tag(pool));
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
                            .arg(record::id_arg(h.id))
                            .arg(record::holder_arg(*holder))
                            .arg(record::encode(&session));
                    }
                    pipe.invoke_script(&invocation);
                }
                pipe
            })
            .collect();
        let (mut put_back, mut ended) = (0, 0);
        let mut failed = BTreeSet::new();
        let mut error = None;
        // An admission waits for a moving slot (TRYAGAIN); a round does not.
        let results = self
            .run_pipelines_with(&[&self.scripts.reassert], &pipes, only.is_some())
            .await;
        for ((shard, batch), result) in batches.iter().zip(results) {
            let replies = match result {
                Ok(replies) => replies,
                Err(e) => {
                    // The outage goes on there: tried again next round.
                    failed.insert(*shard);
                    error = Some(e);
                    continue;
                }
            };
            for (sessions, reply) in batch.iter().zip(replies) {
                let codes: Vec<String> = match redis::from_redis_value(reply) {
                    Ok(codes) => codes,
                    Err(e) => {
                        failed.insert(*shard);
                        error = Some(StoreError::Unavailable(format!("unreadable re-assert reply: {e}")));
                        continue;
                    }
                };
                for ((holder, held), code) in sessions.iter().zip(codes) {
                    let order = match code.as_str() {
                        "r" => continue,
                        "p" => {
                            put_back += 1;
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
                    // Told once: a check, or a re-assertion by an admission
                    // beside this one, may have ended it and told its socket.
                    if self.release_held(*holder, held.id) {
                        ended += 1;
                        self.local.notify(*holder, order);
                    }
                }
            }
        }
        if let Ok(mut v) = self.vouching.lock() {
            v.lost
                .retain(|shard, _| !ready.contains_key(shard) || failed.contains(shard));
            let lost = &v.lost;
            let still: HashSet<u16> = v.suspected.iter().copied().filter(|s| lost.contains_key(s)).collect();
            v.suspected = still;
        }
        if put_back > 0 || ended > 0 {
            tracing::warn!(
                put_back,
                ended,
                shards = ready.len(),
                "Redis was unreachable: this node re-asserted its sessions"
            );
        }
        error.map_or(Ok(put_back), Err)
    }

    /// A pipeline checking `batch` (one shard's sessions) in one script call.
    fn check_pipe(&self, batch: &[(Holder, Held, Millis)]) -> redis::Pipeline {
        let now = batch.iter().map(|(_, _, now)| *now).max().unwrap_or(0);
        let mut invocation = self.scripts.check.prepare_invoke();
        let shard = batch.first().map_or(0, |(_, held, _)| held.pool.shard());
        invocation
            .key(keys::epoch(shard))
            .key(keys::index_prefix(shard))
            .key(keys::alive_prefix(shard))
            .arg(self.now_arg(now))
            .arg(self.known_epoch(shard))
            .arg(new_epoch());
        for (holder, held, _) in batch {
            invocation
                .key(keys::customer(&held.pool))
                .key(keys::tombstone(&held.pool, held.id))
                .arg(record::id_arg(held.id))
                .arg(record::holder_arg(*holder))
                .arg(held.pool.offer_id());
        }
        let mut pipe = redis::pipe();
        pipe.invoke_script(&invocation);
        pipe
    }

    /// Restores this node's held sessions in `shard` if the shard lost its data:
    /// `current` is the shard's epoch as a script just read it. Returns how many.
    ///
    /// A shard's epoch key holds a random value set by whichever script first
    /// finds it missing; every node remembers the value it last saw in each
    /// shard, so each one notices a new epoch (the shard's Redis restarted
    /// empty) exactly once and puts its sessions there back. The other shards'
    /// sessions are not touched.
    pub(super) async fn restore_if_lost(&self, shard: u16, current: &str) -> Result<usize, StoreError> {
        match self.epochs.lock() {
            Ok(mut known) => match known.get(&shard) {
                // The first epoch a node sees is the one it started in: nothing was lost.
                None => {
                    known.insert(shard, current.to_owned());
                    return Ok(0);
                }
                Some(before) if before == current => return Ok(0),
                Some(_) => {}
            },
            Err(_) => return Ok(0),
        }
        let sessions: Vec<(PoolKey, Session)> = self
            .held
            .iter()
            .filter(|e| e.value().pool.shard() == shard)
            .map(|e| {
                let (holder, h) = (*e.key(), e.value());
                let session = Session {
                    id: h.id,
                    name: h.name.clone(),
                    state: SessionState::Live,
                    expires_at: 0,
                    holder: Some(holder),
                    created_at: h.created_at,
                };
                (h.pool.clone(), session)
            })
            .collect();
        let count = sessions.len();
        if count > 0 {
            // Learned only once they are back: a restore that fails is tried again
            // by the next script that finds the new epoch.
            self.restore(sessions).await?;
        }
        if let Ok(mut known) = self.epochs.lock() {
            known.insert(shard, current.to_owned());
        }
        if count == 0 {
            return Ok(0);
        }
        tracing::warn!(
            shard,
            restored = count,
            "a Redis shard had lost its data: this node's sessions there are restored"
        );
        Ok(count)
    }
}

/// The lost shards a re-assertion takes on (`ready`: each with how far back
/// its outage may have begun), given how many pools each holds: the longest
/// lost first, as many as `budget` scripts allow (always at least one).
fn pace(ready: HashMap<u16, u64>, pools_in: &HashMap<u16, usize>, budget: usize) -> HashMap<u16, u64> {
    let mut order: Vec<(u16, u64)> = ready.into_iter().collect();
    order.sort_by_key(|(shard, back)| (std::cmp::Reverse(*back), *shard));
    let mut left = budget;
    let mut taken = HashMap::new();
    for (shard, back) in order {
        let pools = pools_in.get(&shard).copied().unwrap_or(0);
        if !taken.is_empty() && pools > left {
            break;
        }
        left = left.saturating_sub(pools);
        taken.insert(shard, back);
    }
    taken
}

/// The node's liveness key in a shard, set to `until` for one PONG timeout: the
/// command of a vouch, to which the caller adds its condition or `ignore`.
fn set_alive<'p>(
    pipe: &'p mut redis::Pipeline,
    shard: u16,
    node: u64,
    until: &str,
    pong_ms: u64,
) -> &'p mut redis::Pipeline {
    pipe.cmd("SET")
        .arg(keys::alive(shard, node))
        .arg(until)
        .arg("PX")
        .arg(pong_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_takes_the_longest_lost_shards_first_within_the_budget() {
        let ready = HashMap::from([(1, 5_000), (2, 9_000), (3, 7_000), (4, 1_000)]);
        let pools = HashMap::from([(1, 40), (2, 50), (3, 30), (4, 10)]);
        let taken = pace(ready.clone(), &pools, 100);
        // 2 (lost longest, 50), then 3 (30): 80; 1 (40) would pass 100, so it
        // and the shorter-lost 4 wait for the next round.
        assert_eq!(taken, HashMap::from([(2, 9_000), (3, 7_000)]));
        assert_eq!(
            pace(ready.clone(), &pools, 1_000).len(),
            4,
            "all, within a large budget"
        );
        // A shard larger than the whole budget is still taken, alone.
        let big = HashMap::from([(1, 40), (2, 500), (3, 30), (4, 10)]);
        assert_eq!(pace(ready, &big, 100), HashMap::from([(2, 9_000)]));
    }
}
