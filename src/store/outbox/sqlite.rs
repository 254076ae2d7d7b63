//! [`WebhookOutbox`] on SQLite.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection, Row};

use super::lane::{self, Event, Incoming, Lane};
use super::{WAITING, claimed_of, db_err, events_column, short, to_i64, webhook_of};
use crate::domain::Millis;
use crate::domain::events::{Claimed, Enqueued, OutboxCounts, OutboxEvent, Settled, Webhook, WebhookOutbox};
use crate::domain::ports::SettingsError;
use crate::store::sqlite::{SqliteSettings, statements};

/// Every write transaction here takes the write lock at its start: a deferred
/// one that reads first (the cap's count) and writes later cannot wait for
/// another writer (the journal, the delivery) and fails with "database is
/// locked" at once, where this one waits out the busy timeout.
const IMMEDIATE: &str = "BEGIN IMMEDIATE";

/// Rows per INSERT of a batch, at most: 9 parameters each at most, well under
/// SQLite's 32,766 per statement. Powers of two, as [`statements`] cuts by them
/// (a shape per row count would each stay prepared).
const ROWS_PER_INSERT: usize = 128;

/// Ids or keys listed in one statement of a round's outcomes, at most.
const IDS_PER_STATEMENT: usize = 512;

#[async_trait]
impl WebhookOutbox for SqliteSettings {
    /// One node's own database: nodes never share it, so one that was just
    /// upgraded is the only one to read it.
    fn keeps_records(&self) -> bool {
        true
    }

    async fn webhook(&self, publisher_id: &str) -> Result<Option<Webhook>, SettingsError> {
        let row = sqlx::query("SELECT publisher_id, url, secret, events FROM webhooks WHERE publisher_id = ?")
            .bind(publisher_id)
            .fetch_optional(self.pool())
            .await
            .map_err(db_err)?;
        row.as_ref().map(webhook_of).transpose()
    }

    async fn webhooks(&self) -> Result<Vec<Webhook>, SettingsError> {
        let rows = sqlx::query("SELECT publisher_id, url, secret, events FROM webhooks ORDER BY publisher_id")
            .fetch_all(self.pool())
            .await
            .map_err(db_err)?;
        rows.iter().map(webhook_of).collect()
    }

    async fn put_webhook(&self, w: &Webhook) -> Result<(), SettingsError> {
        sqlx::query(
            "INSERT INTO webhooks (publisher_id, url, secret, events) VALUES (?, ?, ?, ?) \
             ON CONFLICT (publisher_id) DO UPDATE SET url = excluded.url, secret = excluded.secret, \
             events = excluded.events, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        )
        .bind(&w.publisher_id)
        .bind(&w.url)
        .bind(&w.secret)
        .bind(events_column(&w.events))
        .execute(self.pool())
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn delete_webhook(&self, publisher_id: &str) -> Result<bool, SettingsError> {
        let mut lane = self.outbox_lane().lock().await;
        let mut tx = self.pool().begin_with(IMMEDIATE).await.map_err(db_err)?;
        let gone = sqlx::query("DELETE FROM webhooks WHERE publisher_id = ?")
            .bind(publisher_id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        for table in ["webhook_outbox", "webhook_outbox_staged"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE publisher_id = ?"))
                .bind(publisher_id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        // Inside the transaction: the appender reads the lane's counts under the
        // write lock. Should the commit fail, the lane is read again.
        lane.forget_publisher(publisher_id);
        if let Err(e) = tx.commit().await {
            lane.reset();
            return Err(db_err(e));
        }
        Ok(gone > 0)
    }

    async fn enqueue(&self, events: &[OutboxEvent], cap: u64) -> Result<Enqueued, SettingsError> {
        // One staged row per publisher of the batch (see the migration
        // webhook_outbox_staged): the write that makes events durable appends,
        // whatever the backlog; the delivery sends from it (see [`lane`]).
        let mut by_publisher: Vec<(&str, Vec<&OutboxEvent>)> = Vec::new();
        for e in events {
            match by_publisher.iter_mut().find(|(p, _)| *p == e.publisher_id) {
                Some((_, list)) => list.push(e),
                None => by_publisher.push((&e.publisher_id, vec![e])),
            }
        }
        let known = self.outbox_held();
        self.appender()
            .with(async |conn| {
                // The common case, a batch of one publisher that fits under its cap
                // by what is known of its outbox, in one plain INSERT: its own
                // transaction, one round trip to the connection's thread.
                if let [(publisher_id, list)] = by_publisher.as_slice() {
                    let n = list.len() as u64;
                    if let Some(held) = held_bound(known, publisher_id).filter(|held| held.saturating_add(n) <= cap) {
                        let batch = frame(list).await?;
                        // Unknown until the INSERT answers: an error leaves no bound.
                        forget_bound(known, publisher_id);
                        append(conn, publisher_id, list.len(), batch).await?;
                        set_bound(known, publisher_id, held + n);
                        return Ok(Enqueued {
                            written: n,
                            refused_full: 0,
                        });
                    }
                }
                for (publisher_id, _) in &by_publisher {
                    forget_bound(known, publisher_id);
                }
                let (done, held) = stage_in_transaction(conn, by_publisher, cap, self.outbox_settled()).await?;
                for (publisher_id, held) in held {
                    set_bound(known, publisher_id, held);
                }
                Ok(done)
            })
            .await
    }

    async fn claim(&self, now: Millis, lease: Millis, limit: u32) -> Result<Vec<Claimed>, SettingsError> {
        let mut lane = self.outbox_lane().lock().await;
        let mut tx = self.pool().begin_with(IMMEDIATE).await.map_err(db_err)?;
        let claimed = match claim_in(&mut tx, &mut lane, now, lease, limit).await {
            Ok(claimed) => claimed,
            Err(e) => {
                // The lane may have moved on with what the transaction undoes.
                lane.reset();
                return Err(e);
            }
        };
        if let Err(e) = tx.commit().await {
            lane.reset();
            return Err(db_err(e));
        }
        Ok(claimed)
    }

    async fn settle(&self, outcomes: &[Settled]) -> Result<(), SettingsError> {
        let mut lane = self.outbox_lane().lock().await;
        let mut tx = self.pool().begin_with(IMMEDIATE).await.map_err(db_err)?;
        if let Err(e) = settle_in(&mut tx, &mut lane, outcomes).await {
            lane.reset();
            return Err(e);
        }
        if let Err(e) = tx.commit().await {
            lane.reset();
            return Err(db_err(e));
        }
        Ok(())
    }

    async fn outbox_counts(&self, publisher_id: &str) -> Result<OutboxCounts, SettingsError> {
        // Under the lane's lock, so no claim or settle is half done: each
        // changes the lane's counts inside its transaction, before the commit,
        // and a read between saw a failed event neither in the lane nor as its
        // row yet (one too few), or a finished batch's count already taken off
        // while its row was still there (a batch too many). One statement, so
        // the rows and the staged batches are read in one snapshot.
        let _lane = self.outbox_lane().lock().await;
        let row = sqlx::query(
            "SELECT COALESCE(SUM(CASE WHEN dead = 0 THEN 1 ELSE 0 END), 0) AS pending, \
             COALESCE(SUM(dead), 0) AS dead, \
             (SELECT COALESCE(SUM(events), 0) FROM webhook_outbox_staged WHERE publisher_id = ?1) AS staged \
             FROM webhook_outbox WHERE publisher_id = ?1",
        )
        .bind(publisher_id)
        .fetch_one(self.pool())
        .await
        .map_err(db_err)?;
        let count = |name| -> Result<u64, SettingsError> {
            Ok(u64::try_from(row.try_get::<i64, _>(name).map_err(db_err)?).unwrap_or(0))
        };
        let staged = lane::undelivered(self.outbox_settled(), publisher_id, count("staged")?);
        Ok(OutboxCounts {
            pending: count("pending")? + staged,
            dead: count("dead")?,
        })
    }
}

/// What the appender knows of a publisher's outbox: at least the events it
/// holds (staged or rows), or nothing. Only the appender adds events to this
/// node's own database; claims move them from the staged table to rows, settles
/// and deletes remove them. So the count read in the last transaction plus what
/// was appended since is never below the truth, and a batch within the cap by it
/// is within the cap: it needs no count read in its statement. An
/// `INSERT … SELECT … WHERE` with the count (the form before) made SQLite copy the
/// batch into a temporary table first, as it does for an INSERT from a SELECT on
/// a table with a trigger (the count's): the ~100 KB batch copied twice more.
/// When the bound says the batch may not fit, the transaction reads the count.
fn held_bound(known: &Mutex<HashMap<String, u64>>, publisher_id: &str) -> Option<u64> {
    known.lock().ok()?.get(publisher_id).copied()
}

fn set_bound(known: &Mutex<HashMap<String, u64>>, publisher_id: &str, held: u64) {
    if let Ok(mut known) = known.lock() {
        known.insert(publisher_id.to_owned(), held);
    }
}

fn forget_bound(known: &Mutex<HashMap<String, u64>>, publisher_id: &str) {
    if let Ok(mut known) = known.lock() {
        known.remove(publisher_id);
    }
}

/// Appends one publisher's framed batch, in its own transaction.
async fn append(
    conn: &mut SqliteConnection,
    publisher_id: &str,
    events: usize,
    batch: String,
) -> Result<(), SettingsError> {
    // The batch is handed over, not borrowed: sqlx copies a borrowed argument
    // before it sends it to the connection's thread.
    sqlx::query("INSERT INTO webhook_outbox_staged (publisher_id, events, batch, form) VALUES (?, ?, ?, ?)")
        .bind(publisher_id)
        .bind(i64::try_from(events).unwrap_or(i64::MAX))
        .bind(batch)
        .bind(COMPACT)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// A batch in one transaction, a staged row per publisher, each cut to the room
/// its outbox has (its oldest dead letters dropped first to make some). With
/// what each publisher's outbox holds after it.
async fn stage_in_transaction<'p>(
    conn: &mut SqliteConnection,
    by_publisher: Vec<(&'p str, Vec<&OutboxEvent>)>,
    cap: u64,
    settled: &lane::Settled,
) -> Result<(Enqueued, Vec<(&'p str, u64)>), SettingsError> {
    let mut tx = conn.begin_with(IMMEDIATE).await.map_err(db_err)?;
    let mut done = Enqueued::default();
    let mut held_after = Vec::with_capacity(by_publisher.len());
    for (publisher_id, mut list) in by_publisher {
        let (room, held) = room_for(&mut tx, publisher_id, cap, settled).await?;
        let left = usize::try_from(room).unwrap_or(usize::MAX);
        if list.len() > left {
            done.refused_full += (list.len() - left) as u64;
            list.truncate(left);
        }
        held_after.push((publisher_id, held + list.len() as u64));
        if list.is_empty() {
            continue;
        }
        let batch = frame(&list).await?;
        sqlx::query("INSERT INTO webhook_outbox_staged (publisher_id, events, batch, form) VALUES (?, ?, ?, ?)")
            .bind(publisher_id)
            .bind(i64::try_from(list.len()).unwrap_or(i64::MAX))
            .bind(batch)
            .bind(COMPACT)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        done.written += list.len() as u64;
    }
    tx.commit().await.map_err(db_err)?;
    Ok((done, held_after))
}

/// Staged batches' forms (the column `form`): [`JSON_ARRAY`] and [`FRAMED`]
/// were written by earlier versions and are still read; [`COMPACT`] is written now.
const JSON_ARRAY: i64 = 1;
const FRAMED: i64 = 2;
const COMPACT: i64 = 3;

/// One staged event, borrowed from its batch where it can be.
struct Unstaged<'a> {
    message_id: Cow<'a, str>,
    ordering_key: Cow<'a, str>,
    event_type: Cow<'a, str>,
    body: Cow<'a, str>,
    created_at: Millis,
}

/// The first form: a JSON array of [message id, ordering key, type, body, created at].
#[derive(serde::Deserialize)]
struct JsonStaged(String, String, String, String, Millis);

/// The [`FRAMED`] form: per event a header line `message_id ordering_key
/// event_type created_at length` and then `length` bytes of body as they are.
/// Read, no longer written: see [`COMPACT`].
fn unframe_framed(batch: &str) -> Result<Vec<Unstaged<'_>>, String> {
    let mut events = Vec::new();
    let mut rest = batch;
    while !rest.is_empty() {
        let (header, after) = rest.split_once('\n').ok_or("a header without its line break")?;
        let mut fields = header.split(' ');
        let mut next = || fields.next().ok_or_else(|| format!("a short header: {header:?}"));
        let (message_id, ordering_key, event_type) = (next()?, next()?, next()?);
        let created_at = next()?.parse().map_err(|_| format!("a bad created_at: {header:?}"))?;
        let length: usize = next()?.parse().map_err(|_| format!("a bad length: {header:?}"))?;
        let body = after
            .get(..length)
            .ok_or_else(|| format!("a body shorter than its length: {header:?}"))?;
        rest = &after[length..];
        events.push(Unstaged {
            message_id: Cow::Borrowed(message_id),
            ordering_key: Cow::Borrowed(ordering_key),
            event_type: Cow::Borrowed(event_type),
            body: Cow::Borrowed(body),
            created_at,
        });
    }
    Ok(events)
}

/// Events framed at most between two yields of the writer's task: framing a
/// batch of thousands at once would hold a runtime thread for a millisecond.
const FRAME_CHUNK: usize = 256;

/// A batch in the [`COMPACT`] form, its events framed a chunk at a time.
async fn frame(events: &[&OutboxEvent]) -> Result<String, SettingsError> {
    let mut framer = Framer::for_events(events);
    for (n, chunk) in events.chunks(FRAME_CHUNK).enumerate() {
        if n > 0 {
            tokio::task::yield_now().await;
        }
        for e in chunk {
            framer.push(e)?;
        }
    }
    Ok(framer.batch)
}

/// The [`COMPACT`] form: per event a header line `message_id key type created
/// length nulls`, then `length` bytes of the stored body. Every byte staged is
/// written twice (the WAL, then the checkpoint) and costs the outbox's SQLite
/// thread on a saturated node's core, so what the body already holds is not
/// written again:
///
/// - `key` (the ordering key) and `type`: `@O+L`, the stored body's bytes from
///   offset `O`, `L` long (a record holds its type and its session id, the usual
///   key); `=`, the message id (an event of no session); or `:` and the text;
/// - `created`: milliseconds since the event before it in the batch (the first's
///   since 0), signed, as the clock may step back;
/// - `nulls`: how many `,null` ended the body before its closing `]` (a record's
///   absent fields) and are not stored: with them the stored body ends before the
///   `,null`s, and they come back with the `]` when read.
///
/// Ids and types are made by this server (`msg_` and hex digits, a session id, a
/// type's name) and never hold a space or a line break; one that did would be
/// refused here rather than misread later.
struct Framer {
    batch: String,
    previous: Millis,
}

/// The `,null` a record's absent field is, and how many are left out at most (a
/// record has 10 fields after its version).
const NULL: &str = ",null";
const MAX_NULLS: usize = 10;

impl Framer {
    fn for_events(events: &[&OutboxEvent]) -> Self {
        // Room for the header with its ids in full: a reallocation of a batch this
        // size costs more than the slack.
        let size = events.iter().map(|e| e.message_id.len() + e.body.len() + 48).sum();
        Self {
            batch: String::with_capacity(size),
            previous: 0,
        }
    }

    fn push(&mut self, e: &OutboxEvent) -> Result<(), SettingsError> {
        check_word(&e.message_id)?;
        let (stored, nulls) = without_nulls(&e.body);
        let batch = &mut self.batch;
        // Written piece by piece, not through `write!`: this runs for every
        // event, on the server's runtime, and the formatter took more than the copies.
        batch.push_str(&e.message_id);
        batch.push(' ');
        if e.ordering_key == e.message_id {
            batch.push('=');
        } else {
            push_reference(batch, stored, &e.ordering_key)?;
        }
        batch.push(' ');
        push_reference(batch, stored, e.event_type.as_str())?;
        batch.push(' ');
        // Two's complement: the read adds it back with `wrapping_add_signed`, exact for any two times.
        let step = e.created_at.wrapping_sub(self.previous) as i64;
        self.previous = e.created_at;
        if step < 0 {
            batch.push('-');
        }
        push_decimal(batch, step.unsigned_abs());
        batch.push(' ');
        push_decimal(batch, stored.len() as u64);
        batch.push(' ');
        push_decimal(batch, nulls as u64);
        batch.push('\n');
        batch.push_str(stored);
        Ok(())
    }
}

/// `body` without the `,null`s before its closing `]`, and how many.
fn without_nulls(body: &str) -> (&str, usize) {
    let Some(mut stored) = body.strip_suffix(']') else {
        return (body, 0);
    };
    let mut nulls = 0;
    while nulls < MAX_NULLS
        && let Some(shorter) = stored.strip_suffix(NULL)
    {
        stored = shorter;
        nulls += 1;
    }
    if nulls == 0 { (body, 0) } else { (stored, nulls) }
}

/// A field written out in a header line: not empty, no space, no line break.
fn check_word(field: &str) -> Result<(), SettingsError> {
    if field.is_empty() || field.bytes().any(|b| b == b' ' || b == b'\n') {
        return Err(SettingsError::Database(format!(
            "an outbox event's id or key holds a space or a line break: {field:?}"
        )));
    }
    Ok(())
}

/// `text` as where it is in `stored` (`@offset+length`), or written out (`:text`).
fn push_reference(batch: &mut String, stored: &str, text: &str) -> Result<(), SettingsError> {
    match quoted_at(stored, text) {
        Some(at) => {
            batch.push('@');
            push_decimal(batch, at as u64);
            batch.push('+');
            push_decimal(batch, text.len() as u64);
        }
        None => {
            check_word(text)?;
            batch.push(':');
            batch.push_str(text);
        }
    }
    Ok(())
}

/// Where `text` starts right after a `"` in `stored`: in a record the key and
/// the type are strings of their own. Only the bytes after each quote are
/// compared, where a general substring search (`str::find`) set up a searcher
/// per call and took more instructions than the rest of the framing.
fn quoted_at(stored: &str, text: &str) -> Option<usize> {
    if text.is_empty() {
        return None;
    }
    let bytes = stored.as_bytes();
    let mut from = 0;
    while let Some(quote) = bytes.get(from..)?.iter().position(|&b| b == b'"') {
        let at = from + quote + 1;
        if bytes[at..].starts_with(text.as_bytes()) {
            return Some(at);
        }
        from = at;
    }
    None
}

/// A key or type of a [`COMPACT`] header, from the stored body it refers to.
fn dereference<'a>(field: &'a str, stored: &'a str, message_id: &'a str) -> Result<&'a str, String> {
    if field == "=" {
        return Ok(message_id);
    }
    if let Some(text) = field.strip_prefix(':') {
        return Ok(text);
    }
    let slice = field.strip_prefix('@').and_then(|at| {
        let (offset, length) = at.split_once('+')?;
        let offset: usize = offset.parse().ok()?;
        stored.get(offset..offset.checked_add(length.parse().ok()?)?)
    });
    slice.ok_or_else(|| format!("a bad reference {field:?} into a body of {} bytes", stored.len()))
}

fn unframe_compact(batch: &str) -> Result<Vec<Unstaged<'_>>, String> {
    let mut events = Vec::new();
    let mut rest = batch;
    let mut previous: Millis = 0;
    while !rest.is_empty() {
        let (header, after) = rest.split_once('\n').ok_or("a header without its line break")?;
        let mut fields = header.split(' ');
        let mut next = || fields.next().ok_or_else(|| format!("a short header: {header:?}"));
        let (message_id, key, event_type, created) = (next()?, next()?, next()?, next()?);
        let length: usize = next()?.parse().map_err(|_| format!("a bad length: {header:?}"))?;
        let nulls: usize = next()?
            .parse()
            .ok()
            .filter(|n| *n <= MAX_NULLS)
            .ok_or_else(|| format!("a bad null count: {header:?}"))?;
        let step: i64 = created.parse().map_err(|_| format!("a bad created_at: {header:?}"))?;
        previous = previous.wrapping_add_signed(step);
        let stored = after
            .get(..length)
            .ok_or_else(|| format!("a body shorter than its length: {header:?}"))?;
        rest = &after[length..];
        let body = if nulls == 0 {
            Cow::Borrowed(stored)
        } else {
            let mut body = String::with_capacity(stored.len() + nulls * NULL.len() + 1);
            body.push_str(stored);
            for _ in 0..nulls {
                body.push_str(NULL);
            }
            body.push(']');
            Cow::Owned(body)
        };
        events.push(Unstaged {
            message_id: Cow::Borrowed(message_id),
            ordering_key: Cow::Borrowed(dereference(key, stored, message_id)?),
            event_type: Cow::Borrowed(dereference(event_type, stored, message_id)?),
            body,
            created_at: previous,
        });
    }
    Ok(events)
}

/// `n` in decimal, as `Display` writes it.
fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[start..] {
        out.push(char::from(d));
    }
}

/// The events of a staged batch, in order; an error for a batch this version
/// cannot read (a newer node's form, or damage).
fn unframe(form: i64, batch: &str) -> Result<Vec<Unstaged<'_>>, String> {
    match form {
        JSON_ARRAY => {
            let events: Vec<JsonStaged> = serde_json::from_str(batch).map_err(|e| e.to_string())?;
            Ok(events
                .into_iter()
                .map(|JsonStaged(message_id, key, event_type, body, created_at)| Unstaged {
                    message_id: Cow::Owned(message_id),
                    ordering_key: Cow::Owned(key),
                    event_type: Cow::Owned(event_type),
                    body: Cow::Owned(body),
                    created_at,
                })
                .collect())
        }
        FRAMED => unframe_framed(batch),
        COMPACT => unframe_compact(batch),
        other => Err(format!("an unknown form {other}")),
    }
}

/// A claim's work inside its transaction: due rows first (retries, and events
/// that waited behind a row), then the lane's events, reading staged batches
/// into it as needed (see [`lane`]).
async fn claim_in(
    tx: &mut SqliteConnection,
    lane: &mut Lane,
    now: Millis,
    lease: Millis,
    limit: u32,
) -> Result<Vec<Claimed>, SettingsError> {
    // A single UPDATE: SQLite runs one writer at a time, so nothing claims
    // the same rows between the choice and the lease.
    let rows = sqlx::query(
        "UPDATE webhook_outbox SET next_attempt_at = ?1 WHERE id IN ( \
           SELECT o.id FROM webhook_outbox o \
           WHERE o.dead = 0 AND o.next_attempt_at <= ?2 \
             AND o.id = (SELECT MIN(i.id) FROM webhook_outbox i \
                         WHERE i.ordering_key = o.ordering_key AND i.dead = 0) \
           ORDER BY o.next_attempt_at, o.id LIMIT ?3) \
         RETURNING id, message_id, publisher_id, body, created_at, attempts",
    )
    .bind(to_i64(now.saturating_add(lease)))
    .bind(to_i64(now))
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await
    .map_err(db_err)?;
    let mut claimed = rows.iter().map(claimed_of).collect::<Result<Vec<_>, SettingsError>>()?;
    let wanted = (limit as usize).saturating_sub(claimed.len());
    let most = (limit as usize).saturating_mul(LANE_ROUNDS).max(LANE_LEAST);
    while lane.wants_more(wanted, most) {
        if !refill(&mut *tx, lane).await? {
            break;
        }
    }
    claimed.extend(lane.hand_out(now, lease, wanted));
    claimed.sort_by_key(|c| c.id);
    Ok(claimed)
}

/// Events the lane holds at most, in claims' sizes (and at least [`LANE_LEAST`]):
/// a batch is read only while fewer are in memory.
const LANE_ROUNDS: usize = 8;
const LANE_LEAST: usize = 1024;

/// Reads the next staged batch into the lane; false if there is none (or it
/// cannot be read: a newer node's form stays for it, and so does what follows,
/// as order per session wants).
async fn refill(tx: &mut SqliteConnection, lane: &mut Lane) -> Result<bool, SettingsError> {
    let next: Option<(i64, String, String, i64)> = sqlx::query_as(
        "SELECT id, publisher_id, batch, form FROM webhook_outbox_staged WHERE id > ? ORDER BY id LIMIT 1",
    )
    .bind(lane.read_upto())
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_err)?;
    let Some((id, publisher_id, batch, form)) = next else {
        return Ok(false);
    };
    let events = match unframe(form, &batch) {
        Ok(events) => events,
        Err(e) => {
            tracing::error!(error = %e, staged = id, "unreadable staged webhook events: left in webhook_outbox_staged");
            return Ok(false);
        }
    };
    // The keys that have undelivered rows: their events become rows behind
    // them. A key in the lane has none.
    let mut keys: Vec<&str> = events
        .iter()
        .map(|e| e.ordering_key.as_ref())
        .filter(|k| !lane.holds_key(k))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let mut with_rows = std::collections::HashSet::new();
    for chunk in statements(&keys, IDS_PER_STATEMENT) {
        let mut probe = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "SELECT DISTINCT ordering_key FROM webhook_outbox WHERE dead = 0 AND ordering_key IN ",
        );
        push_list(&mut probe, chunk.iter().copied());
        let found: Vec<String> = probe.build_query_scalar().fetch_all(&mut *tx).await.map_err(db_err)?;
        with_rows.extend(found);
    }
    let incoming = events
        .iter()
        .map(|e| Incoming {
            message_id: e.message_id.to_string(),
            ordering_key: e.ordering_key.to_string(),
            event_type: e.event_type.to_string(),
            body: e.body.to_string(),
            created_at: e.created_at,
        })
        .collect();
    let (rows, done) = lane.take_batch(id, &publisher_id, incoming, |key| with_rows.contains(key));
    insert_rows(&mut *tx, &publisher_id, &unstaged(&rows)).await?;
    if done {
        delete_staged(&mut *tx, &[id]).await?;
    }
    Ok(true)
}

/// A settle's work inside its transaction: the lane's events and rows alike.
async fn settle_in(tx: &mut SqliteConnection, lane: &mut Lane, outcomes: &[Settled]) -> Result<(), SettingsError> {
    // The keys whose head row left: their next rows become due. A round
    // claims one row per key, so no key is here twice.
    let mut left_keys: Vec<String> = Vec::new();
    let mut delivered_ids: Vec<i64> = Vec::new();
    for outcome in outcomes {
        match outcome {
            Settled::Delivered { id } if Lane::owns(*id) => {
                lane.delivered(*id);
            }
            Settled::Retry {
                id,
                attempts,
                next_at,
                error,
            } if Lane::owns(*id) => {
                if let Some(fate) = lane.failed(*id, *attempts, Some(*next_at), error) {
                    make_rows(&mut *tx, fate).await?;
                }
            }
            Settled::Dead { id, attempts, error } if Lane::owns(*id) => {
                if let Some(fate) = lane.failed(*id, *attempts, None, error) {
                    make_rows(&mut *tx, fate).await?;
                }
            }
            Settled::Delivered { id } => delivered_ids.push(*id),
            Settled::Retry {
                id,
                attempts,
                next_at,
                error,
            } => retry(&mut *tx, *id, *attempts, *next_at, error).await?,
            Settled::Dead { id, attempts, error } => {
                left_keys.extend(dead_letter(&mut *tx, *id, *attempts, error).await?);
            }
        }
    }
    // Deliveries are nearly every outcome: a statement per slice of them,
    // not two per row (each statement is a round trip to the connection's thread).
    for ids in statements(&delivered_ids, IDS_PER_STATEMENT) {
        let mut delete = sqlx::QueryBuilder::<sqlx::Sqlite>::new("DELETE FROM webhook_outbox WHERE id IN ");
        push_list(&mut delete, ids.iter().copied());
        delete.push(" RETURNING ordering_key");
        let keys: Vec<String> = delete.build_query_scalar().fetch_all(&mut *tx).await.map_err(db_err)?;
        left_keys.extend(keys);
    }
    for keys in statements(&left_keys, IDS_PER_STATEMENT) {
        promote_next(&mut *tx, keys).await?;
    }
    delete_staged(&mut *tx, &lane.done_batches()).await
}

/// A failed lane event as a row (retried later, or a dead letter), then the
/// events that waited behind it, as rows behind it.
async fn make_rows(tx: &mut SqliteConnection, fate: lane::Fate) -> Result<(), SettingsError> {
    let failed = &fate.failed;
    let e = &failed.event;
    sqlx::query(
        "INSERT INTO webhook_outbox (message_id, publisher_id, ordering_key, event_type, body, created_at, \
         attempts, next_attempt_at, dead, last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&e.message_id)
    .bind(&e.publisher_id)
    .bind(&e.ordering_key)
    .bind(&e.event_type)
    .bind(&e.body)
    .bind(to_i64(e.created_at))
    .bind(i64::from(failed.attempts))
    .bind(failed.next_at.map_or(0, to_i64))
    .bind(i64::from(failed.next_at.is_none()))
    .bind(short(&failed.error))
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    if let Some(first) = fate.rows.first() {
        insert_rows(&mut *tx, &first.publisher_id, &unstaged(&fate.rows)).await?;
    }
    Ok(())
}

/// Deletes staged batches every event of which left the lane.
async fn delete_staged(tx: &mut SqliteConnection, ids: &[i64]) -> Result<(), SettingsError> {
    for chunk in statements(ids, IDS_PER_STATEMENT) {
        let mut delete = sqlx::QueryBuilder::<sqlx::Sqlite>::new("DELETE FROM webhook_outbox_staged WHERE id IN ");
        push_list(&mut delete, chunk.iter().copied());
        delete.build().execute(&mut *tx).await.map_err(db_err)?;
    }
    Ok(())
}

/// Lane events as rows to insert (all of one publisher).
fn unstaged(events: &[Event]) -> Vec<Unstaged<'_>> {
    events
        .iter()
        .map(|e| Unstaged {
            message_id: Cow::Borrowed(&e.message_id),
            ordering_key: Cow::Borrowed(&e.ordering_key),
            event_type: Cow::Borrowed(&e.event_type),
            body: Cow::Borrowed(&e.body),
            created_at: e.created_at,
        })
        .collect()
}

impl SqliteSettings {
    /// At a graceful stop: what the lane holds becomes rows, in order per
    /// session, and its batches go, so the next start sends nothing twice.
    pub(in crate::store) async fn park_outbox_lane(&self) {
        let mut lane = self.outbox_lane().lock().await;
        let (events, batches) = lane.drain();
        if batches.is_empty() {
            return;
        }
        let parked = async {
            let mut tx = self.pool().begin_with(IMMEDIATE).await.map_err(db_err)?;
            let mut publishers: Vec<&str> = events.iter().map(|e| e.publisher_id.as_str()).collect();
            publishers.sort_unstable();
            publishers.dedup();
            for publisher_id in publishers {
                let of: Vec<Event> = events
                    .iter()
                    .filter(|e| e.publisher_id == publisher_id)
                    .cloned()
                    .collect();
                insert_rows(&mut tx, publisher_id, &unstaged(&of)).await?;
            }
            delete_staged(&mut tx, &batches).await?;
            tx.commit().await.map_err(db_err)
        };
        if let Err(e) = parked.await {
            // The batches stay: the next start sends their events, some again.
            tracing::warn!(error = %e, "could not keep the webhook events in flight as rows");
        }
    }
}

/// Inserts a batch's rows, many per statement (each statement is a round trip to
/// the connection's thread). A row waits if an earlier undelivered row of its key
/// is in the outbox or earlier in this batch.
async fn insert_rows(
    tx: &mut sqlx::SqliteConnection,
    publisher_id: &str,
    events: &[Unstaged<'_>],
) -> Result<(), SettingsError> {
    let mut keys_seen = std::collections::HashSet::with_capacity(events.len());
    for chunk in statements(events, ROWS_PER_INSERT) {
        let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO webhook_outbox \
             (message_id, publisher_id, ordering_key, event_type, body, created_at, next_attempt_at) ",
        );
        insert.push_values(chunk, |mut row, e| {
            let key: &str = &e.ordering_key;
            let created_at = e.created_at;
            row.push_bind(e.message_id.as_ref())
                .push_bind(publisher_id)
                .push_bind(key)
                .push_bind(e.event_type.as_ref())
                .push_bind(e.body.as_ref())
                .push_bind(to_i64(created_at));
            if keys_seen.insert(key) {
                // Rows of this statement are not looked at: none has this key.
                row.push_unseparated(", CASE WHEN EXISTS (SELECT 1 FROM webhook_outbox WHERE ordering_key = ")
                    .push_bind_unseparated(key)
                    .push_unseparated(" AND dead = 0) THEN ")
                    .push_bind_unseparated(WAITING)
                    .push_unseparated(" ELSE ")
                    .push_bind_unseparated(to_i64(created_at))
                    .push_unseparated(" END");
            } else {
                row.push_bind(WAITING);
            }
        });
        insert.build().execute(&mut *tx).await.map_err(db_err)?;
    }
    Ok(())
}

async fn retry(
    tx: &mut sqlx::SqliteConnection,
    id: i64,
    attempts: u32,
    next_at: Millis,
    error: &str,
) -> Result<(), SettingsError> {
    sqlx::query("UPDATE webhook_outbox SET attempts = ?, next_attempt_at = ?, last_error = ? WHERE id = ?")
        .bind(i64::from(attempts))
        .bind(to_i64(next_at))
        .bind(short(error))
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// The row's ordering key, if it was there.
async fn dead_letter(
    tx: &mut sqlx::SqliteConnection,
    id: i64,
    attempts: u32,
    error: &str,
) -> Result<Option<String>, SettingsError> {
    sqlx::query_scalar(
        "UPDATE webhook_outbox SET dead = 1, attempts = ?, last_error = ? WHERE id = ? RETURNING ordering_key",
    )
    .bind(i64::from(attempts))
    .bind(short(error))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_err)
}

/// How many more rows the publisher's outbox takes under `cap`, after dropping
/// as many of its oldest dead letters as the room needs; and how many it holds.
async fn room_for(
    tx: &mut sqlx::SqliteConnection,
    publisher_id: &str,
    cap: u64,
    settled: &lane::Settled,
) -> Result<(u64, u64), SettingsError> {
    let held = count_rows(&mut *tx, publisher_id, settled).await?;
    if held < cap {
        return Ok((cap - held, held));
    }
    // Full: make room from the dead letters, oldest first (a slice at a time).
    sqlx::query(
        "DELETE FROM webhook_outbox WHERE id IN (SELECT id FROM webhook_outbox \
         WHERE publisher_id = ? AND dead = 1 ORDER BY id LIMIT 1000)",
    )
    .bind(publisher_id)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    let held = count_rows(&mut *tx, publisher_id, settled).await?;
    Ok((cap.saturating_sub(held), held))
}

/// The events the publisher's outbox holds: as the triggers count them (rows,
/// and staged batches whole), less the events of staged batches that left the
/// lane.
async fn count_rows(
    tx: &mut sqlx::SqliteConnection,
    publisher_id: &str,
    settled: &lane::Settled,
) -> Result<u64, SettingsError> {
    let held: i64 =
        sqlx::query_scalar("SELECT COALESCE((SELECT held FROM webhook_outbox_counts WHERE publisher_id = ?), 0)")
            .bind(publisher_id)
            .fetch_one(tx)
            .await
            .map_err(db_err)?;
    Ok(lane::undelivered(
        settled,
        publisher_id,
        u64::try_from(held).unwrap_or(0),
    ))
}

/// Appends `(?, ?, …)` to `query`, one bound parameter per item: the lists of
/// ids and keys the statements here take (at most [`IDS_PER_STATEMENT`]).
fn push_list<'q, T>(query: &mut sqlx::QueryBuilder<'q, sqlx::Sqlite>, items: impl IntoIterator<Item = T>)
where
    T: 'q + sqlx::Encode<'q, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    query.push("(");
    let mut list = query.separated(", ");
    for item in items {
        list.push_bind(item);
    }
    list.push_unseparated(")");
}

/// For each key whose head row left, the key's next row is due now.
async fn promote_next(tx: &mut sqlx::SqliteConnection, keys: &[String]) -> Result<(), SettingsError> {
    let mut promote = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
        "UPDATE webhook_outbox SET next_attempt_at = 0 WHERE next_attempt_at = ",
    );
    promote.push_bind(WAITING);
    promote.push(" AND id IN (SELECT MIN(id) FROM webhook_outbox WHERE dead = 0 AND ordering_key IN ");
    push_list(&mut promote, keys);
    promote.push(" GROUP BY ordering_key)");
    promote.build().execute(tx).await.map_err(db_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::events::EventType;

    fn event(n: u64, body: &str) -> OutboxEvent {
        OutboxEvent {
            message_id: format!("msg_{n}"),
            publisher_id: "p".into(),
            ordering_key: format!("key-{}", n % 2),
            event_type: EventType::Ended,
            body: body.into(),
            created_at: 1_764_527_405_000 + n,
        }
    }

    /// Bodies go in as they are, whatever they hold (line breaks, spaces, header-like
    /// text, `,null`s, nothing), and come out the same, in order, with their keys,
    /// types and times, whether the body holds them or not.
    #[tokio::test]
    async fn a_compact_batch_reads_back_every_event_as_written() {
        let bodies = [
            "{\"a\":\"b c\"}",
            "",
            "x 1 2 3 4\nmsg_9 k t 1 2\n",
            "\u{e9}\u{1f600}",
            "[1,\"\\\"\"]",
            "[1,\"session.ended\",\"key-1\",null,null]",
            ",null]",
            "[,null,null,null,null,null,null,null,null,null,null,null,null]",
            "]",
            "[1,\"session.granted\",\"key-0\"]",
        ];
        let mut events: Vec<OutboxEvent> = bodies.iter().enumerate().map(|(n, b)| event(n as u64, b)).collect();
        // An event of no session (keyed by its message id), and clocks that step back.
        events[3].ordering_key = events[3].message_id.clone();
        events[4].created_at = 5;
        events[6].created_at = u64::MAX;
        let refs: Vec<&OutboxEvent> = events.iter().collect();
        let batch = frame(&refs).await.expect("framed");
        let read = unframe(COMPACT, &batch).expect("read back");
        assert_eq!(read.len(), events.len());
        for (e, r) in events.iter().zip(&read) {
            assert_eq!(r.message_id, e.message_id);
            assert_eq!(r.ordering_key, e.ordering_key);
            assert_eq!(r.event_type, e.event_type.as_str());
            assert_eq!(r.body, e.body);
            assert_eq!(r.created_at, e.created_at);
        }
    }

    /// What the form leaves out: a record's key, type, trailing nulls and most of
    /// its time are not written twice.
    #[tokio::test]
    async fn a_compact_event_stages_its_record_and_little_more() {
        let id = "0f6d8a4e-2b1c-4d6e-9f00-1a2b3c4d5e6f";
        let record = format!("[1,\"session.granted\",\"c\",\"o\",\"{id}\",null,null,null,null,null,null]");
        let mut e = event(0, &record);
        e.ordering_key = id.into();
        e.event_type = EventType::Granted;
        let mut second = event(1, &record);
        (second.ordering_key, second.event_type) = (id.into(), EventType::Granted);
        let batch = frame(&[&e, &second]).await.expect("framed");
        let stored = record.trim_end_matches(']').trim_end_matches(",null");
        assert_eq!(
            batch,
            format!(
                "msg_0 @30+36 @4+15 1764527405000 {n} 6\n{stored}msg_1 @30+36 @4+15 1 {n} 6\n{stored}",
                n = stored.len()
            )
        );
        let read = unframe(COMPACT, &batch).expect("read back");
        assert_eq!(
            (read[1].body.as_ref(), read[1].ordering_key.as_ref()),
            (record.as_str(), id)
        );
    }

    /// A batch of many chunks is framed as one batch.
    #[tokio::test]
    async fn a_batch_of_many_chunks_is_one_batch() {
        let events: Vec<OutboxEvent> = (0..(FRAME_CHUNK as u64 * 2 + 3)).map(|n| event(n, "[1]")).collect();
        let refs: Vec<&OutboxEvent> = events.iter().collect();
        let read_back = frame(&refs).await.expect("framed");
        let read = unframe(COMPACT, &read_back).expect("read back");
        assert_eq!(read.len(), events.len());
        assert!(read.iter().zip(&events).all(|(r, e)| r.created_at == e.created_at));
    }

    /// Batches staged before the compact form are still read.
    #[test]
    fn a_framed_batch_of_the_second_version_is_still_read() {
        let batch = "msg_1 k session.ended 7 7\n{\"a\":1}msg_2 k2 session.granted 1764527405000 0\n";
        let read = unframe(FRAMED, batch).expect("read");
        assert_eq!(read.len(), 2);
        assert_eq!(
            (
                read[0].message_id.as_ref(),
                read[0].ordering_key.as_ref(),
                read[0].body.as_ref(),
                read[0].created_at
            ),
            ("msg_1", "k", "{\"a\":1}", 7)
        );
        assert_eq!(
            (read[1].event_type.as_ref(), read[1].body.as_ref(), read[1].created_at),
            ("session.granted", "", 1_764_527_405_000)
        );
        assert!(unframe(FRAMED, &batch[..batch.len() - 2]).is_err());
    }

    #[test]
    fn a_batch_staged_by_the_first_version_is_still_read() {
        let batch = r#"[["msg_1","k","session.ended","{\"a\":1}",7],["msg_2","k","session.granted","",8]]"#;
        let read = unframe(JSON_ARRAY, batch).expect("read");
        assert_eq!(read.len(), 2);
        assert_eq!(
            (read[0].message_id.as_ref(), read[0].body.as_ref(), read[0].created_at),
            ("msg_1", "{\"a\":1}", 7)
        );
        assert_eq!(
            (read[1].event_type.as_ref(), read[1].body.as_ref()),
            ("session.granted", "")
        );
    }

    #[tokio::test]
    async fn a_damaged_or_unknown_batch_is_an_error_and_an_id_with_a_space_is_refused() {
        let events = [event(1, "[1,\"key-1\",null]")];
        let refs: Vec<&OutboxEvent> = events.iter().collect();
        let batch = frame(&refs).await.expect("framed");
        assert!(unframe(COMPACT, &batch[..batch.len() - 1]).is_err());
        assert!(unframe(4, &batch).is_err());
        for damaged in [
            "m @9+2 :t 0 3 0\nabc",
            "m @1+x :t 0 3 0\nabc",
            "m = :t 0 3 11\nabc",
            "m = :t 0 3 18446744073709551615\nabc",
            "m = :t x 3 0\nabc",
            "m = :t 0 3\nabc",
        ] {
            assert!(unframe(COMPACT, damaged).is_err(), "{damaged:?}");
        }
        let mut spaced = event(1, "body");
        spaced.ordering_key = "a b".into();
        assert!(frame(&[&spaced]).await.is_err());
    }
}
