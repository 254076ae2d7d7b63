//! The SQLite outbox's delivery lane: events sent straight from the staged
//! batches the writer made durable, with no row of their own.
//!
//! Why: as rows, each event was inserted, claimed by an update and deleted,
//! through three secondary indexes, one keyed by the random session id; that was
//! most of the 60–130 µs of server CPU a delivered event cost (bench/analysis.md,
//! "Webhook delivery's cost, round nine"). Here a batch is read once, its events
//! go out from memory, and the batch row is deleted once every event of it has
//! left the lane. Only an event that fails, or one whose session already has a
//! row waiting, becomes a row, and then the rows keep order as before.
//!
//! What it keeps (one node owns a SQLite outbox, so its memory is the truth
//! about what is in flight):
//! - **Order per session.** A key (session) is either in the lane or has rows,
//!   never both: an event whose key has an undelivered row becomes a row behind
//!   it; one whose key has an event in the lane waits behind that event, in
//!   memory; a failed event becomes a row, and the events waiting behind it
//!   become rows after it (rows are ordered by id).
//! - **At least once.** A batch row is deleted only when each of its events was
//!   delivered or became a row, in the same transaction as that. A crash before
//!   sends the batch's events again; a graceful stop makes rows of what is left
//!   ([`Lane::drain`]), so a restart sends nothing twice.
//! - **The lease.** An event handed out is handed out again once its lease ends
//!   without an outcome (the attempt's caller died).
//! - **The counts.** The count triggers count a batch's events until the batch
//!   row goes; the events that already left the lane are counted here per
//!   publisher ([`Settled`]) and taken off every count that is read. They
//!   change inside the transaction of the claim or settle that moves the
//!   events, before its commit, so a count is read under the write lock (the
//!   appender's) or the lane's lock (the admin view's), never between.
//!
//! The lane changes only inside the write transaction that records the change
//! (the outbox's callers take the lane's lock, then the write lock); if that
//! transaction fails the lane is reset and read again from the database.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::domain::Millis;
use crate::domain::events::Claimed;

/// Per publisher: events of batches still staged that have left the lane
/// (delivered, or rows now). Shared with the appender, which reads it with the
/// count triggers' totals.
pub(in crate::store) type Settled = Arc<Mutex<HashMap<String, u64>>>;

/// The first id handed to a lane event: lane ids are negative, so they never
/// meet a row's id, and grow in the order events were read.
const FIRST_ID: i64 = i64::MIN / 2;

/// One event read from a staged batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::store) struct Event {
    pub id: i64,
    pub staged: i64,
    pub message_id: String,
    pub publisher_id: String,
    pub ordering_key: String,
    pub event_type: String,
    pub body: String,
    pub created_at: Millis,
}

/// One event of a batch, before it enters the lane.
pub(in crate::store) struct Incoming {
    pub message_id: String,
    pub ordering_key: String,
    pub event_type: String,
    pub body: String,
    pub created_at: Millis,
}

struct Batch {
    publisher_id: String,
    events: u64,
    left: u64,
}

/// What a failed lane event asks of the database.
pub(in crate::store) struct Fate {
    /// The row to insert first: the failed event (with its attempts, when next
    /// and why) or a dead letter.
    pub failed: Failed,
    /// Then rows for these, in this order: the events that waited behind a
    /// failed one, which must now wait behind its row.
    pub rows: Vec<Event>,
}

#[derive(Debug)]
pub(in crate::store) struct Failed {
    pub event: Event,
    pub attempts: u32,
    /// `None`: a dead letter.
    pub next_at: Option<Millis>,
    pub error: String,
}

pub(in crate::store) struct Lane {
    batches: BTreeMap<i64, Batch>,
    /// The highest staged id read.
    read_upto: i64,
    ready: VecDeque<Event>,
    /// Handed out, by id, until when.
    flying: BTreeMap<i64, (Event, Millis)>,
    /// Each key with an event ready or flying: the events waiting behind it.
    lines: HashMap<String, VecDeque<Event>>,
    waiting: usize,
    next_id: i64,
    settled: Settled,
}

impl Lane {
    pub(in crate::store) fn new(settled: Settled) -> Self {
        Self {
            batches: BTreeMap::new(),
            read_upto: 0,
            ready: VecDeque::new(),
            flying: BTreeMap::new(),
            lines: HashMap::new(),
            waiting: 0,
            next_id: FIRST_ID,
            settled,
        }
    }

    /// Whether `id` is a lane event's (rows' ids are positive).
    pub(in crate::store) fn owns(id: i64) -> bool {
        id < 0
    }

    /// Forgets everything: the next claim reads the staged batches again.
    pub(in crate::store) fn reset(&mut self) {
        let settled = self.settled.clone();
        if let Ok(mut counts) = settled.lock() {
            counts.clear();
        }
        *self = Self::new(settled);
    }

    /// The staged id after which to read the next batch.
    pub(in crate::store) fn read_upto(&self) -> i64 {
        self.read_upto
    }

    /// Whether another batch should be read for a claim of `limit`: fewer are
    /// ready, and memory holds less than `most` events.
    pub(in crate::store) fn wants_more(&self, limit: usize, most: usize) -> bool {
        self.ready.len() < limit && self.ready.len() + self.flying.len() + self.waiting < most
    }

    /// Whether `key` has an event in the lane.
    pub(in crate::store) fn holds_key(&self, key: &str) -> bool {
        self.lines.contains_key(key)
    }

    /// Takes in batch `staged` of `publisher_id`: each event goes to `rows` when
    /// `has_rows` says its key has an undelivered row, waits behind its key's
    /// event already in the lane, or is ready. Returns the events to make rows
    /// of, in order, and whether the batch is done with (no event of it is left
    /// in the lane: delete its row).
    pub(in crate::store) fn take_batch(
        &mut self,
        staged: i64,
        publisher_id: &str,
        events: Vec<Incoming>,
        has_rows: impl Fn(&str) -> bool,
    ) -> (Vec<Event>, bool) {
        self.read_upto = self.read_upto.max(staged);
        let total = events.len() as u64;
        let mut rows = Vec::new();
        for e in events {
            let event = Event {
                id: self.next_id,
                staged,
                message_id: e.message_id,
                publisher_id: publisher_id.to_owned(),
                ordering_key: e.ordering_key,
                event_type: e.event_type,
                body: e.body,
                created_at: e.created_at,
            };
            self.next_id += 1;
            if has_rows(&event.ordering_key) {
                rows.push(event);
            } else if let Some(line) = self.lines.get_mut(&event.ordering_key) {
                line.push_back(event);
                self.waiting += 1;
            } else {
                self.lines.insert(event.ordering_key.clone(), VecDeque::new());
                self.ready.push_back(event);
            }
        }
        let left = total - rows.len() as u64;
        self.count_settled(publisher_id, rows.len() as u64);
        if left == 0 {
            self.count_settled_batch_gone(publisher_id, total);
            return (rows, true);
        }
        self.batches.insert(
            staged,
            Batch {
                publisher_id: publisher_id.to_owned(),
                events: total,
                left,
            },
        );
        (rows, false)
    }

    /// Hands out at most `limit` events for `lease` ms: first those whose lease
    /// ended at `now`, then ready ones.
    pub(in crate::store) fn hand_out(&mut self, now: Millis, lease: Millis, limit: usize) -> Vec<Claimed> {
        let until = now.saturating_add(lease);
        let mut out = Vec::new();
        for (event, end) in self.flying.values_mut() {
            if out.len() >= limit {
                break;
            }
            if *end <= now {
                *end = until;
                out.push(claimed(event));
            }
        }
        while out.len() < limit {
            let Some(event) = self.ready.pop_front() else {
                break;
            };
            out.push(claimed(&event));
            self.flying.insert(event.id, (event, until));
        }
        out
    }

    /// The event `id` was delivered (or its publisher has no webhook any more).
    /// False if the lane does not know it (reset since, or already settled).
    pub(in crate::store) fn delivered(&mut self, id: i64) -> bool {
        let Some((event, _)) = self.flying.remove(&id) else {
            return false;
        };
        self.next_of(&event.ordering_key);
        self.left_lane(&event);
        true
    }

    /// The event `id` failed: tried again at `next_at`, or given up on (`None`).
    pub(in crate::store) fn failed(
        &mut self,
        id: i64,
        attempts: u32,
        next_at: Option<Millis>,
        error: &str,
    ) -> Option<Fate> {
        let (event, _) = self.flying.remove(&id)?;
        self.left_lane(&event);
        let mut rows = Vec::new();
        if next_at.is_some() {
            // Still undelivered, as a row: what waited behind it waits behind that row.
            if let Some(line) = self.lines.remove(&event.ordering_key) {
                self.waiting -= line.len();
                for e in &line {
                    self.left_lane(e);
                }
                rows.extend(line);
            }
        } else {
            // A dead letter lets the next event of its session go.
            self.next_of(&event.ordering_key);
        }
        Some(Fate {
            failed: Failed {
                event,
                attempts,
                next_at,
                error: error.to_owned(),
            },
            rows,
        })
    }

    /// The batches every event of which has left the lane: their rows can go.
    pub(in crate::store) fn done_batches(&mut self) -> Vec<i64> {
        let done: Vec<i64> = self
            .batches
            .iter()
            .filter(|(_, b)| b.left == 0)
            .map(|(id, _)| *id)
            .collect();
        for id in &done {
            if let Some(batch) = self.batches.remove(id) {
                self.count_settled_batch_gone(&batch.publisher_id, batch.events);
            }
        }
        done
    }

    /// Drops the publisher's events and batches (its webhook is gone, and with it
    /// its staged batches and rows).
    pub(in crate::store) fn forget_publisher(&mut self, publisher_id: &str) {
        let of = |e: &Event| e.publisher_id == publisher_id;
        // A key is one session's, so one publisher's.
        let keys: Vec<String> = self
            .ready
            .iter()
            .chain(self.flying.values().map(|(e, _)| e))
            .chain(self.lines.values().filter_map(VecDeque::front))
            .filter(|e| of(e))
            .map(|e| e.ordering_key.clone())
            .collect();
        for key in keys {
            if let Some(line) = self.lines.remove(&key) {
                self.waiting -= line.len();
            }
        }
        self.ready.retain(|e| !of(e));
        self.flying.retain(|_, (e, _)| !of(e));
        self.batches.retain(|_, b| b.publisher_id != publisher_id);
        if let Ok(mut counts) = self.settled.lock() {
            counts.remove(publisher_id);
        }
    }

    /// Everything still in the lane, for rows at a graceful stop: per key the
    /// event ready or flying, then those behind it, keys in the order read; and
    /// every batch read (their rows can go once these are rows).
    pub(in crate::store) fn drain(&mut self) -> (Vec<Event>, Vec<i64>) {
        let mut heads: Vec<Event> = self.flying.values().map(|(e, _)| e.clone()).collect();
        heads.extend(self.ready.iter().cloned());
        heads.sort_by_key(|e| e.id);
        let mut out = Vec::new();
        for head in heads {
            let line = self.lines.remove(&head.ordering_key).unwrap_or_default();
            out.push(head);
            out.extend(line);
        }
        let batches = self.batches.keys().copied().collect();
        self.reset();
        (out, batches)
    }

    fn next_of(&mut self, key: &str) {
        let next = match self.lines.get_mut(key) {
            Some(line) => line.pop_front(),
            None => return,
        };
        match next {
            Some(event) => {
                self.waiting -= 1;
                self.ready.push_back(event);
            }
            None => {
                self.lines.remove(key);
            }
        }
    }

    fn left_lane(&mut self, event: &Event) {
        let known = match self.batches.get_mut(&event.staged) {
            Some(batch) => {
                batch.left = batch.left.saturating_sub(1);
                true
            }
            None => false,
        };
        if known {
            self.count_settled(&event.publisher_id, 1);
        }
    }

    fn count_settled(&self, publisher_id: &str, n: u64) {
        if n == 0 {
            return;
        }
        if let Ok(mut counts) = self.settled.lock() {
            *counts.entry(publisher_id.to_owned()).or_default() += n;
        }
    }

    fn count_settled_batch_gone(&self, publisher_id: &str, events: u64) {
        if let Ok(mut counts) = self.settled.lock()
            && let Some(n) = counts.get_mut(publisher_id)
        {
            *n = n.saturating_sub(events);
            if *n == 0 {
                counts.remove(publisher_id);
            }
        }
    }
}

fn claimed(event: &Event) -> Claimed {
    Claimed {
        id: event.id,
        message_id: event.message_id.clone(),
        publisher_id: event.publisher_id.clone(),
        body: event.body.clone(),
        created_at: event.created_at,
        attempts: 0,
    }
}

/// Of `held` (as the count triggers count, staged batches whole), those still
/// undelivered: less the events of staged batches that left the lane.
pub(in crate::store) fn undelivered(settled: &Settled, publisher_id: &str, held: u64) -> u64 {
    let gone = settled
        .lock()
        .ok()
        .and_then(|counts| counts.get(publisher_id).copied())
        .unwrap_or(0);
    held.saturating_sub(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming(key: &str, n: u64) -> Incoming {
        Incoming {
            message_id: format!("msg_{key}_{n}"),
            ordering_key: key.into(),
            event_type: "session.granted".into(),
            body: format!("{{\"n\":{n}}}"),
            created_at: n,
        }
    }

    fn lane() -> (Lane, Settled) {
        let settled = Settled::default();
        (Lane::new(settled.clone()), settled)
    }

    fn ids(claimed: &[Claimed]) -> Vec<&str> {
        claimed.iter().map(|c| c.message_id.as_str()).collect()
    }

    fn gone(settled: &Settled, p: &str) -> u64 {
        settled.lock().unwrap().get(p).copied().unwrap_or(0)
    }

    #[test]
    fn a_sessions_events_go_one_at_a_time_in_order_and_the_batch_is_done_after_the_last() {
        let (mut lane, settled) = lane();
        let batch = vec![incoming("a", 1), incoming("b", 2), incoming("a", 3)];
        let (rows, done) = lane.take_batch(7, "p", batch, |_| false);
        assert!(rows.is_empty() && !done);
        let first = lane.hand_out(0, 100, 10);
        assert_eq!(ids(&first), ["msg_a_1", "msg_b_2"]);
        assert!(lane.delivered(first[0].id));
        assert_eq!(gone(&settled, "p"), 1);
        assert!(lane.done_batches().is_empty());
        let second = lane.hand_out(0, 100, 10);
        assert_eq!(ids(&second), ["msg_a_3"]);
        assert!(lane.delivered(first[1].id) && lane.delivered(second[0].id));
        assert_eq!(lane.done_batches(), [7]);
        assert_eq!(gone(&settled, "p"), 0, "the batch's row took its events off the count");
        assert!(!lane.delivered(second[0].id), "settled once");
    }

    #[test]
    fn an_event_whose_session_has_rows_becomes_a_row_and_a_failed_one_takes_its_followers_along() {
        let (mut lane, settled) = lane();
        let batch = vec![incoming("a", 1), incoming("r", 2), incoming("a", 3), incoming("a", 4)];
        let (rows, done) = lane.take_batch(1, "p", batch, |key| key == "r");
        assert_eq!(
            rows.iter().map(|e| e.message_id.as_str()).collect::<Vec<_>>(),
            ["msg_r_2"]
        );
        assert!(!done);
        let out = lane.hand_out(0, 100, 10);
        assert_eq!(ids(&out), ["msg_a_1"]);
        let fate = lane.failed(out[0].id, 1, Some(50), "HTTP 500").unwrap();
        let failed = fate.failed;
        assert_eq!(
            (failed.event.message_id.as_str(), failed.next_at),
            ("msg_a_1", Some(50))
        );
        assert_eq!(
            fate.rows.iter().map(|e| e.message_id.as_str()).collect::<Vec<_>>(),
            ["msg_a_3", "msg_a_4"]
        );
        assert!(!lane.holds_key("a"));
        assert_eq!(lane.done_batches(), [1], "every event of it is a row now");
        assert_eq!(gone(&settled, "p"), 0);
        assert!(lane.hand_out(0, 100, 10).is_empty());
    }

    #[test]
    fn a_dead_letter_lets_the_next_event_go_and_a_lease_that_ran_out_hands_an_event_out_again() {
        let (mut lane, _) = lane();
        lane.take_batch(1, "p", vec![incoming("a", 1), incoming("a", 2)], |_| false);
        let out = lane.hand_out(10, 100, 10);
        assert!(lane.hand_out(109, 100, 10).is_empty());
        let again = lane.hand_out(110, 100, 10);
        assert_eq!(again, out, "the same event, the same id");
        let fate = lane.failed(out[0].id, 3, None, "gone").unwrap();
        assert!(fate.rows.is_empty());
        assert_eq!(ids(&lane.hand_out(110, 100, 10)), ["msg_a_2"]);
    }

    #[test]
    fn a_stop_drains_each_session_in_order_and_a_forgotten_publisher_leaves_nothing() {
        let (mut lane, settled) = lane();
        lane.take_batch(
            1,
            "p",
            vec![incoming("a", 1), incoming("b", 2), incoming("a", 3)],
            |_| false,
        );
        lane.take_batch(2, "q", vec![incoming("c", 4)], |_| false);
        let out = lane.hand_out(0, 100, 1);
        assert!(lane.delivered(out[0].id));
        lane.forget_publisher("q");
        assert_eq!(gone(&settled, "q"), 0);
        let (events, batches) = lane.drain();
        assert_eq!(
            events.iter().map(|e| e.message_id.as_str()).collect::<Vec<_>>(),
            ["msg_b_2", "msg_a_3"]
        );
        assert_eq!(batches, [1]);
        assert_eq!(gone(&settled, "p"), 0, "drained: counted by the rows now");
        assert!(lane.hand_out(0, 100, 10).is_empty());
    }
}
