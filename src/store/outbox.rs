//! The publishers' webhooks and the durable outbox of their events
//! ([`WebhookOutbox`]), in the settings database: `sqlite` for one node,
//! `postgres` for a cluster (where several nodes claim from the same outbox).
//!
//! Order per session is kept by the rows themselves (on SQLite, events are sent
//! from their staged batches and only those that fail or must wait become rows:
//! [`lane`]): a new row whose ordering key
//! already has an undelivered row waits at [`WAITING`] and is made due when the
//! row before it leaves (delivered, dead-lettered), so claiming is a range scan
//! over due rows whatever the backlog.

pub(super) mod lane;
mod postgres;
mod sqlite;
mod staged;

use crate::domain::events::{Claimed, EventType, OutboxBatch, Webhook};
use crate::domain::ports::SettingsError;

/// `next_attempt_at` of a row waiting for an earlier row of its key.
const WAITING: i64 = i64::MAX;

/// The longest error kept on a row (a receiver's answer may be long).
const MAX_ERROR_BYTES: usize = 512;

fn db_err(e: impl std::fmt::Display) -> SettingsError {
    SettingsError::Database(e.to_string())
}

/// Events per publisher of a writer's batches, the publishers in the order
/// each first appears.
fn events_per_publisher(batches: &[OutboxBatch]) -> Vec<(&str, u64)> {
    let mut totals: Vec<(&str, u64)> = Vec::new();
    for batch in batches {
        let n = batch.len() as u64;
        match totals.iter_mut().find(|(p, _)| *p == batch.publisher_id) {
            Some((_, total)) => *total += n,
            None => totals.push((&batch.publisher_id, n)),
        }
    }
    totals
}

fn events_column(events: &[EventType]) -> String {
    events.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(",")
}

/// A webhook from its row (`publisher_id, url, secret, events`), on either database.
fn webhook_of<R: sqlx::Row>(r: &R) -> Result<Webhook, SettingsError>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'v> String: sqlx::Decode<'v, R::Database> + sqlx::Type<R::Database>,
{
    let events: String = r.try_get("events").map_err(db_err)?;
    Ok(Webhook {
        publisher_id: r.try_get("publisher_id").map_err(db_err)?,
        url: r.try_get("url").map_err(db_err)?,
        secret: r.try_get("secret").map_err(db_err)?,
        // Types this version does not know (a newer node wrote them) are skipped.
        events: events.split(',').filter_map(EventType::parse).collect(),
    })
}

/// A claimed event from its row (`id, message_id, publisher_id, body,
/// created_at, attempts`), on either database.
fn claimed_of<R: sqlx::Row>(r: &R) -> Result<Claimed, SettingsError>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'v> String: sqlx::Decode<'v, R::Database> + sqlx::Type<R::Database>,
    for<'v> i64: sqlx::Decode<'v, R::Database> + sqlx::Type<R::Database>,
{
    Ok(Claimed {
        id: r.try_get("id").map_err(db_err)?,
        message_id: r.try_get("message_id").map_err(db_err)?,
        publisher_id: r.try_get("publisher_id").map_err(db_err)?,
        body: r.try_get("body").map_err(db_err)?,
        created_at: u64::try_from(r.try_get::<i64, _>("created_at").map_err(db_err)?).unwrap_or(0),
        attempts: u32::try_from(r.try_get::<i64, _>("attempts").map_err(db_err)?).unwrap_or(0),
    })
}

fn short(error: &str) -> &str {
    if error.len() <= MAX_ERROR_BYTES {
        return error;
    }
    let mut end = MAX_ERROR_BYTES;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    &error[..end]
}

fn to_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::events::{BATCH_EVENTS, OutboxBody, OutboxEvent, OutboxQueue};

    fn event(publisher_id: &str, n: usize) -> OutboxEvent {
        OutboxEvent {
            message_id: format!("{publisher_id}{n}"),
            publisher_id: publisher_id.into(),
            event_type: EventType::Granted,
            body: OutboxBody::Text {
                body: "{}".into(),
                ordering_key: "k".into(),
            },
            created_at: n as u64,
        }
    }

    /// The message ids a batch holds, read back from its bytes.
    fn ids(batch: &OutboxBatch) -> Vec<String> {
        staged::unstage(staged::PACKED, &batch.packed, &batch.publisher_id)
            .expect("readable")
            .iter()
            .map(|e| e.message_id.to_string())
            .collect()
    }

    #[test]
    fn queued_events_are_cut_into_batches_of_one_publisher_each_in_order_and_no_larger_than_a_row() {
        // q first, then p; p's 1,100 events interleaved with q's 600.
        let mut written = vec![event("q", 0)];
        for n in 0..1_100 {
            written.push(event("p", n));
            if n < 599 {
                written.push(event("q", n + 1));
            }
        }
        let mut queue = OutboxQueue::default();
        for e in &written {
            queue
                .push(&e.publisher_id, |b| staged::pack_into(b, e))
                .expect("packed");
        }
        assert_eq!(queue.len(), 1_700);
        let batches = queue.take(usize::MAX);
        assert!(queue.is_empty());
        let shape: Vec<(&str, usize)> = batches.iter().map(|b| (b.publisher_id.as_str(), b.len())).collect();
        // Full batches in the order they filled, then the open ones.
        assert_eq!(shape, [("q", 512), ("p", 512), ("p", 512), ("q", 88), ("p", 76)]);
        for publisher_id in ["p", "q"] {
            let read: Vec<String> = batches
                .iter()
                .filter(|b| b.publisher_id == publisher_id)
                .flat_map(ids)
                .collect();
            let sent: Vec<String> = written
                .iter()
                .filter(|e| e.publisher_id == publisher_id)
                .map(|e| e.message_id.clone())
                .collect();
            assert_eq!(read, sent, "{publisher_id}'s events in the order written");
        }
        assert_eq!(events_per_publisher(&batches), [("q", 600), ("p", 1_100)]);
    }

    #[test]
    fn a_take_stops_after_the_full_batches_that_reach_its_most_and_leaves_the_rest_in_order() {
        let mut queue = OutboxQueue::default();
        for n in 0..BATCH_EVENTS * 3 + 5 {
            queue
                .push("p", |b| staged::pack_into(b, &event("p", n)))
                .expect("packed");
        }
        let first = queue.take(BATCH_EVENTS + 1);
        assert_eq!(first.iter().map(OutboxBatch::len).collect::<Vec<_>>(), [512, 512]);
        assert_eq!(queue.len(), BATCH_EVENTS + 5);
        let rest = queue.take(usize::MAX);
        assert_eq!(rest.iter().map(OutboxBatch::len).collect::<Vec<_>>(), [512, 5]);
        let read: Vec<String> = first.iter().chain(&rest).flat_map(ids).collect();
        let sent: Vec<String> = (0..BATCH_EVENTS * 3 + 5).map(|n| format!("p{n}")).collect();
        assert_eq!(read, sent);
        assert!(
            queue.take(usize::MAX).is_empty(),
            "nothing left, not even an empty batch"
        );
    }

    #[test]
    fn a_batch_cut_to_its_first_events_reads_as_those_events() {
        let mut queue = OutboxQueue::default();
        for n in 0..10 {
            queue
                .push("p", |b| staged::pack_into(b, &event("p", n)))
                .expect("packed");
        }
        let mut batch = queue.take(usize::MAX).pop().expect("a batch");
        batch.truncate(4);
        assert_eq!(ids(&batch), ["p0", "p1", "p2", "p3"]);
        batch.truncate(0);
        assert!(batch.packed.is_empty() && batch.is_empty());
    }

    #[test]
    fn an_event_refused_by_the_packing_leaves_the_queue_as_it_was() {
        let mut queue = OutboxQueue::default();
        queue
            .push("p", |b| staged::pack_into(b, &event("p", 0)))
            .expect("packed");
        let mut keyless = event("p", 1);
        keyless.message_id.clear();
        assert!(queue.push("p", |b| staged::pack_into(b, &keyless)).is_err());
        assert_eq!(queue.len(), 1);
        let batches = queue.take(usize::MAX);
        assert_eq!(batches.iter().flat_map(ids).collect::<Vec<_>>(), ["p0"]);
    }
}
