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

use crate::domain::events::{Claimed, EventType, OutboxEvent, Webhook};
use crate::domain::ports::SettingsError;

/// `next_attempt_at` of a row waiting for an earlier row of its key.
const WAITING: i64 = i64::MAX;

/// The longest error kept on a row (a receiver's answer may be long).
const MAX_ERROR_BYTES: usize = 512;

fn db_err(e: impl std::fmt::Display) -> SettingsError {
    SettingsError::Database(e.to_string())
}

/// Events in one staged row at most. The writer's transaction may hold several
/// rows (`events.outbox_batch` events): its commit (an fsync, the WAL's pages)
/// costs a saturated node's core more than the rows in it, so a transaction
/// carries as many events as the gather collects, while a row stays the size
/// the delivery reads at once (a lane's batch, a move's unit).
const ROW_EVENTS: usize = 512;

/// A writer's batch as staged rows: one publisher's events each, at most
/// [`ROW_EVENTS`], the publishers in the order each first appears and each
/// publisher's rows in the order of its events.
fn staged_rows(events: &[OutboxEvent]) -> Vec<(&str, Vec<&OutboxEvent>)> {
    let mut by_publisher: Vec<(&str, Vec<&OutboxEvent>)> = Vec::new();
    for e in events {
        match by_publisher.iter_mut().find(|(p, _)| *p == e.publisher_id) {
            Some((_, list)) => list.push(e),
            None => by_publisher.push((&e.publisher_id, vec![e])),
        }
    }
    by_publisher
        .into_iter()
        .flat_map(|(publisher_id, list)| {
            list.chunks(ROW_EVENTS)
                .map(|row| (publisher_id, row.to_vec()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Events per publisher of [`staged_rows`]'s rows, in the same order.
fn events_per_publisher<'a>(rows: &[(&'a str, Vec<&OutboxEvent>)]) -> Vec<(&'a str, u64)> {
    let mut totals: Vec<(&str, u64)> = Vec::new();
    for (publisher_id, list) in rows {
        match totals.iter_mut().find(|(p, _)| p == publisher_id) {
            Some((_, n)) => *n += list.len() as u64,
            None => totals.push((publisher_id, list.len() as u64)),
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
    use crate::domain::events::OutboxBody;

    fn event(publisher_id: &str, n: usize) -> OutboxEvent {
        OutboxEvent {
            message_id: format!("{publisher_id}{n}"),
            publisher_id: publisher_id.into(),
            event_type: EventType::Granted,
            body: OutboxBody::Text {
                body: "{}".into(),
                ordering_key: "k".into(),
            },
            created_at: 0,
        }
    }

    #[test]
    fn a_batch_is_cut_into_rows_of_one_publisher_each_in_order_and_no_larger_than_a_row() {
        // q first, then p; p's 1,100 events interleaved with q's 600.
        let mut batch = vec![event("q", 0)];
        for n in 0..1_100 {
            batch.push(event("p", n));
            if n < 599 {
                batch.push(event("q", n + 1));
            }
        }
        let rows = staged_rows(&batch);
        let shape: Vec<(&str, usize)> = rows.iter().map(|(p, list)| (*p, list.len())).collect();
        assert_eq!(shape, [("q", 512), ("q", 88), ("p", 512), ("p", 512), ("p", 76)]);
        for publisher_id in ["p", "q"] {
            let ids: Vec<&str> = rows
                .iter()
                .filter(|(p, _)| *p == publisher_id)
                .flat_map(|(_, list)| list.iter().map(|e| e.message_id.as_str()))
                .collect();
            let written: Vec<&str> = batch
                .iter()
                .filter(|e| e.publisher_id == publisher_id)
                .map(|e| e.message_id.as_str())
                .collect();
            assert_eq!(ids, written, "{publisher_id}'s events in the order written");
        }
        assert_eq!(events_per_publisher(&rows), [("q", 600), ("p", 1_100)]);
    }
}
