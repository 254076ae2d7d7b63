//! Session events: what control reports as sessions are granted, refused, taken
//! over, kicked and ended, for the operators' live stream and the publishers'
//! webhooks; and the port of the durable outbox those webhooks are sent from.
//!
//! Reporting an event is a cheap push that never waits (see
//! [`super::ports::SessionEvents`]); everything that can be slow (writing the
//! outbox, calling a publisher's endpoint) happens behind it, off the admission path.

use std::borrow::Cow;

use async_trait::async_trait;

use super::clock::Millis;
use super::ports::{EndCause, SettingsError};
use super::session::{PoolKey, SessionId};

/// The kinds of event, as named on the wire (`type` in the JSON body, `event:` in
/// the stream) and in a webhook's `events` list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Granted,
    Refused,
    TakenOver,
    Ended,
    Kicked,
}

impl EventType {
    pub const ALL: [Self; 5] = [Self::Granted, Self::Refused, Self::TakenOver, Self::Ended, Self::Kicked];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Granted => "session.granted",
            Self::Refused => "session.refused",
            Self::TakenOver => "session.taken_over",
            Self::Ended => "session.ended",
            Self::Kicked => "session.kicked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// One bit per type, for the cheap "does this publisher want it" test.
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// Why a create was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// The pool holds as many sessions as the offer allows.
    LimitExceeded,
    /// The customer holds sessions in as many pools as the server allows.
    TooManyPools,
    /// The customer holds as many sessions across all offers as the publisher's
    /// household cap (`customerSessionLimit`) allows.
    HouseholdLimit,
}

impl RefusalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LimitExceeded => "limit_exceeded",
            Self::TooManyPools => "too_many_pools",
            Self::HouseholdLimit => "household_limit",
        }
    }
}

/// What happened, with what only that kind of event carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    Granted,
    /// `enforced: false` is a refusal that a limit in shadow mode (an offer's
    /// `onLimit: "monitor"`) would have made, while the session was granted: the
    /// same type, so that a receiver counting refusals sees what enforcing would do.
    Refused {
        reason: RefusalReason,
        enforced: bool,
    },
    /// The event's session was taken over by the session `by` (named `by_name`).
    /// The taken-over session also gets a `session.ended` with cause `taken_over`.
    TakenOver {
        by: SessionId,
        by_name: String,
    },
    Ended {
        cause: EndCause,
    },
    /// An operator (or the session's owner) ended it; a `session.ended` with
    /// cause `kicked` follows.
    Kicked,
}

impl EventKind {
    pub fn event_type(&self) -> EventType {
        match self {
            Self::Granted => EventType::Granted,
            Self::Refused { .. } => EventType::Refused,
            Self::TakenOver { .. } => EventType::TakenOver,
            Self::Ended { .. } => EventType::Ended,
            Self::Kicked => EventType::Kicked,
        }
    }
}

/// One session event. The time is stamped by whoever receives the report (the
/// wall clock when it is reported), since some reporters (a store pruning dead
/// sessions) have no clock at hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEvent {
    pub kind: EventKind,
    /// The pool: publisher, customer, and the offer the pool is of.
    pub pool: PoolKey,
    /// None for a refusal: no session was made.
    pub session_id: Option<SessionId>,
    /// The session's name, where the reporter knows it.
    pub session_name: Option<String>,
}

impl SessionEvent {
    pub fn new(kind: EventKind, pool: &PoolKey, session_id: Option<SessionId>, session_name: Option<&str>) -> Self {
        Self {
            kind,
            pool: pool.clone(),
            session_id,
            session_name: session_name.map(str::to_owned),
        }
    }

    pub fn ended(pool: &PoolKey, id: SessionId, name: Option<&str>, cause: EndCause) -> Self {
        Self::new(EventKind::Ended { cause }, pool, Some(id), name)
    }

    pub fn event_type(&self) -> EventType {
        self.kind.event_type()
    }
}

/// A publisher's webhook: where its events are sent, signed with `secret`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub publisher_id: String,
    pub url: String,
    /// `whsec_` and the base64 of the signing key (Standard Webhooks).
    pub secret: String,
    /// The types sent; never empty.
    pub events: Vec<EventType>,
}

impl Webhook {
    pub fn wants(&self, t: EventType) -> bool {
        self.events.contains(&t)
    }

    /// The event types as a bit set ([`EventType::bit`]).
    pub fn mask(&self) -> u8 {
        self.events.iter().fold(0, |m, t| m | t.bit())
    }
}

/// What every message id of this server's making begins with.
pub const MESSAGE_PREFIX: &str = "msg_";

/// A message id of this server's making (`webhook-id`): [`MESSAGE_PREFIX`] and
/// the 32 lower-case hex digits of a random id, written into one allocation.
pub fn message_id_text(id: [u8; 16]) -> String {
    let mut text = String::with_capacity(MESSAGE_PREFIX.len() + 32);
    text.push_str(MESSAGE_PREFIX);
    text.push_str(
        uuid::Uuid::from_bytes(id)
            .simple()
            .encode_lower(&mut uuid::Uuid::encode_buffer()),
    );
    text
}

/// An event to write to the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// `webhook-id`: the same on every attempt, so a receiver can drop duplicates.
    pub message_id: String,
    pub publisher_id: String,
    pub event_type: EventType,
    pub body: OutboxBody,
    /// When the event was reported (unix ms).
    pub created_at: Millis,
}

/// What an outbox is given to send: the event itself, which the outbox turns into
/// bytes its own way ([`WebhookOutbox::pack`]), or text to send as it is.
/// Whatever an outbox keeps, every attempt sends the same bytes: the JSON body
/// of the event at `created_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxBody {
    Event(SessionEvent),
    Text { body: String, ordering_key: String },
}

impl OutboxEvent {
    /// Events with the same key are delivered in the order they were written,
    /// each only after the one before succeeded (or was given up on). An event's
    /// key is its session's id, or its message id for an event of no session (a
    /// refusal): known from the event, so it is made only where an outbox needs
    /// it as text.
    pub fn ordering_key(&self) -> Cow<'_, str> {
        match &self.body {
            OutboxBody::Event(event) => match event.session_id {
                Some(id) => Cow::Owned(id.with_text(str::to_owned)),
                None => Cow::Borrowed(&self.message_id),
            },
            OutboxBody::Text { ordering_key, .. } => Cow::Borrowed(ordering_key),
        }
    }
}

/// Events in one [`OutboxBatch`] at most: a staged row of the outbox, the unit
/// its delivery reads at once. The writer's transaction may hold many.
pub const BATCH_EVENTS: usize = 512;

/// Events of one publisher on their way to the outbox, already in the form it
/// stages them ([`WebhookOutbox::pack`]): packed as they are reported, while
/// the event is still in the reporting thread's cache. Packed later by the
/// writer (round twenty-one to thirty), every event was copied into a queue,
/// copied out, read again cold a gather later (200 ms, thousands of events on)
/// and freed there: more than the packing itself (bench/analysis.md, round
/// thirty-one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxBatch {
    pub publisher_id: String,
    /// The events' bytes, one after the other.
    pub packed: Vec<u8>,
    /// Where each event ends in `packed`: the first `n` events are the bytes
    /// up to `ends[n - 1]`, a batch of their own (the outbox's cap may keep
    /// only those).
    pub ends: Vec<u32>,
    /// The last event's `created_at`: the packed form keeps each time as a
    /// difference to the one before.
    pub last_created_at: Millis,
}

impl OutboxBatch {
    pub fn new(publisher_id: String) -> Self {
        Self {
            publisher_id,
            ..Self::default()
        }
    }

    /// Events in the batch.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Keeps the first `n` events.
    pub fn truncate(&mut self, n: usize) {
        if n >= self.ends.len() {
            return;
        }
        let end = n.checked_sub(1).map_or(0, |last| self.ends[last] as usize);
        self.packed.truncate(end);
        self.ends.truncate(n);
    }
}

/// Events waiting for the outbox's writer, packed as they were reported
/// ([`OutboxBatch`]): an open batch per publisher, and those already full
/// ([`BATCH_EVENTS`]) in the order they filled. A publisher's full batches come
/// before its open one, so [`OutboxQueue::take`] keeps each publisher's order,
/// which is each session's.
#[derive(Debug, Default)]
pub struct OutboxQueue {
    /// Each publisher's open batch: its place in `open`.
    places: std::collections::HashMap<String, usize, foldhash::fast::RandomState>,
    open: Vec<OutboxBatch>,
    full: std::collections::VecDeque<OutboxBatch>,
    events: usize,
}

impl OutboxQueue {
    /// Events queued.
    pub fn len(&self) -> usize {
        self.events
    }

    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// Packs an event of `publisher_id` at the end of its open batch, with
    /// `pack` (an outbox's [`WebhookOutbox::pack`] or
    /// [`WebhookOutbox::pack_reported`]). An event it refuses (no message id or
    /// ordering key: a bug upstream) leaves the queue as it was.
    pub fn push<E>(
        &mut self,
        publisher_id: &str,
        pack: impl FnOnce(&mut OutboxBatch) -> Result<(), E>,
    ) -> Result<(), E> {
        let place = match self.places.get(publisher_id) {
            Some(&place) => place,
            None => {
                self.open.push(OutboxBatch::new(publisher_id.to_owned()));
                self.places.insert(publisher_id.to_owned(), self.open.len() - 1);
                self.open.len() - 1
            }
        };
        let batch = &mut self.open[place];
        pack(batch)?;
        self.events += 1;
        if batch.len() >= BATCH_EVENTS {
            let publisher_id = batch.publisher_id.clone();
            let full = std::mem::replace(batch, OutboxBatch::new(publisher_id));
            self.full.push_back(full);
        }
        Ok(())
    }

    /// The batches for one write: full ones first, oldest first, until `most`
    /// events are taken; if there is room left, every open batch too.
    pub fn take(&mut self, most: usize) -> Vec<OutboxBatch> {
        let mut taken = Vec::new();
        let mut events = 0;
        while events < most
            && let Some(batch) = self.full.pop_front()
        {
            events += batch.len();
            taken.push(batch);
        }
        if events < most {
            for batch in self.open.drain(..) {
                events += batch.len();
                taken.push(batch);
            }
            self.places.clear();
        }
        self.events -= events;
        taken.retain(|batch| !batch.is_empty());
        taken
    }
}

/// An outbox row claimed for one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub id: i64,
    pub message_id: String,
    pub publisher_id: String,
    pub body: String,
    pub created_at: Millis,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// What one batch written to the outbox did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Enqueued {
    pub written: u64,
    /// Refused because the publisher's outbox held its cap of undelivered events.
    pub refused_full: u64,
}

/// Publishers' webhooks and the durable outbox their events wait in, in the
/// settings database. The outbox is a queue with one head per ordering key:
/// [`WebhookOutbox::claim`] only hands out the oldest undelivered event of each
/// key, so a session's later event waits for the earlier one.
#[async_trait]
pub trait WebhookOutbox: Send + Sync + 'static {
    async fn webhook(&self, publisher_id: &str) -> Result<Option<Webhook>, SettingsError>;
    /// Every publisher's webhook (one per publisher at most).
    async fn webhooks(&self) -> Result<Vec<Webhook>, SettingsError>;
    async fn put_webhook(&self, webhook: &Webhook) -> Result<(), SettingsError>;
    /// Removes the webhook and the events still waiting for it. False if there was none.
    async fn delete_webhook(&self, publisher_id: &str) -> Result<bool, SettingsError>;

    /// Appends `event` to `batch` in the form this outbox stages it (called as
    /// events are reported, under the queue's lock: cheap, and never waits).
    /// Refused if the event has no message id or ordering key.
    fn pack(&self, batch: &mut OutboxBatch, event: &OutboxEvent) -> Result<(), SettingsError>;

    /// [`WebhookOutbox::pack`] of a session event as the server reports it,
    /// whose message id is [`message_id_text`] of `message_id`: no text is made
    /// for the id (nor for the publisher, the batch's).
    fn pack_reported(&self, batch: &mut OutboxBatch, message_id: [u8; 16], event: &SessionEvent, created_at: Millis);

    /// Writes batches ([`WebhookOutbox::pack`]) in one transaction, in the order
    /// given. A publisher whose outbox holds `cap` rows (waiting or
    /// dead-lettered) first loses its oldest dead letters; if it is still full,
    /// the new events are refused (the last of its batches first) and counted.
    async fn enqueue_packed(&self, batches: Vec<OutboxBatch>, cap: u64) -> Result<Enqueued, SettingsError>;

    /// [`WebhookOutbox::enqueue_packed`] of events not packed yet.
    async fn enqueue(&self, events: &[OutboxEvent], cap: u64) -> Result<Enqueued, SettingsError> {
        let mut queue = OutboxQueue::default();
        for event in events {
            queue.push(&event.publisher_id, |batch| self.pack(batch, event))?;
        }
        self.enqueue_packed(queue.take(usize::MAX), cap).await
    }

    /// Claims at most `limit` events due at `now`, each the oldest undelivered one
    /// of its ordering key, for `lease` ms: nobody else (no other node) claims
    /// them before the lease ends, and a node that died mid-attempt leaves them to
    /// be claimed again then.
    async fn claim(&self, now: Millis, lease: Millis, limit: u32) -> Result<Vec<Claimed>, SettingsError>;
    /// Records what attempts came to, in one transaction.
    async fn settle(&self, outcomes: &[Settled]) -> Result<(), SettingsError>;
    /// The event was delivered: it leaves the outbox.
    async fn delivered(&self, id: i64) -> Result<(), SettingsError> {
        self.settle(&[Settled::Delivered { id }]).await
    }
    /// The attempt failed: try again at `next_at`.
    async fn retry(&self, id: i64, attempts: u32, next_at: Millis, error: &str) -> Result<(), SettingsError> {
        let error = error.to_owned();
        self.settle(&[Settled::Retry {
            id,
            attempts,
            next_at,
            error,
        }])
        .await
    }
    /// Given up on: kept as a dead letter (no longer claimed, still counted
    /// against the cap until newer events need the room).
    async fn dead_letter(&self, id: i64, attempts: u32, error: &str) -> Result<(), SettingsError> {
        let error = error.to_owned();
        self.settle(&[Settled::Dead { id, attempts, error }]).await
    }
    /// Waiting and dead-lettered events of one publisher.
    async fn outbox_counts(&self, publisher_id: &str) -> Result<OutboxCounts, SettingsError>;
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Delivered: the event leaves the outbox, and the next of its key is due.
    Delivered { id: i64 },
    /// Failed: tried again at `next_at`.
    Retry {
        id: i64,
        attempts: u32,
        next_at: Millis,
        error: String,
    },
    /// Given up on: a dead letter, and the next of its key is due.
    Dead { id: i64, attempts: u32, error: String },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    pub pending: u64,
    pub dead: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_round_trip_and_have_distinct_bits() {
        let mut bits = 0u8;
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            assert_eq!(bits & t.bit(), 0);
            bits |= t.bit();
        }
        assert_eq!(EventType::parse("session.unknown"), None);
    }
}
