//! [`WebhookOutbox`] on SQLite.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection, Row};

use super::lane::{self, Event, Incoming, Lane};
use super::staged::{self, StagedBody, Unstaged};
use super::{WAITING, claimed_of, db_err, events_column, events_per_publisher, short, to_i64, webhook_of};
use crate::domain::Millis;
use crate::domain::events::{
    Claimed, Enqueued, OutboxBatch, OutboxCounts, OutboxEvent, SessionEvent, Settled, Webhook, WebhookOutbox,
};
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

    fn pack(&self, batch: &mut OutboxBatch, event: &OutboxEvent) -> Result<(), SettingsError> {
        staged::pack_into(batch, event)
    }

    fn pack_reported(&self, batch: &mut OutboxBatch, message_id: [u8; 16], event: &SessionEvent, created_at: Millis) {
        staged::pack_reported_into(batch, message_id, event, created_at);
    }

    async fn enqueue_packed(&self, batches: Vec<OutboxBatch>, cap: u64) -> Result<Enqueued, SettingsError> {
        // Staged rows of one publisher each (see the migration
        // webhook_outbox_staged), all in one transaction: the write that makes
        // events durable appends, whatever the backlog; the delivery sends from
        // the rows (see [`lane`]).
        let known = self.outbox_held();
        self.appender()
            .with(async |conn| {
                let totals = events_per_publisher(&batches);
                // The common case, every publisher of the batch under its cap by
                // what is known of its outbox: the rows appended with no count read.
                let after: Option<Vec<(String, u64)>> = totals
                    .iter()
                    .map(|&(publisher_id, n)| {
                        let held = held_bound(known, publisher_id).filter(|held| held.saturating_add(n) <= cap)?;
                        Some((publisher_id.to_owned(), held + n))
                    })
                    .collect();
                let written = totals.iter().map(|(_, n)| n).sum();
                // Unknown until the INSERTs answer: an error leaves no bound.
                for (publisher_id, _) in &totals {
                    forget_bound(known, publisher_id);
                }
                if let Some(after) = after {
                    append(conn, batches).await?;
                    for (publisher_id, held) in after {
                        set_bound(known, &publisher_id, held);
                    }
                    return Ok(Enqueued {
                        written,
                        refused_full: 0,
                    });
                }
                let (done, held) = stage_in_transaction(conn, batches, cap, self.outbox_settled()).await?;
                for (publisher_id, held) in held {
                    set_bound(known, &publisher_id, held);
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

/// Appends the batches as staged rows: one alone is a plain INSERT,
/// its own transaction and one round trip to the connection's thread; more go
/// in one transaction, one commit.
async fn append(conn: &mut SqliteConnection, batches: Vec<OutboxBatch>) -> Result<(), SettingsError> {
    let batches = match <[_; 1]>::try_from(batches) {
        Ok([batch]) => return insert_staged(conn, batch).await,
        Err(batches) => batches,
    };
    let mut tx = conn.begin_with(IMMEDIATE).await.map_err(db_err)?;
    for batch in batches {
        insert_staged(&mut tx, batch).await?;
    }
    tx.commit().await.map_err(db_err)
}

async fn insert_staged(conn: &mut SqliteConnection, batch: OutboxBatch) -> Result<(), SettingsError> {
    // The bytes are handed over, not borrowed: sqlx copies a borrowed argument
    // before it sends it to the connection's thread.
    sqlx::query("INSERT INTO webhook_outbox_staged (publisher_id, events, batch, form) VALUES (?, ?, ?, ?)")
        .bind(batch.publisher_id)
        .bind(i64::try_from(batch.ends.len()).unwrap_or(i64::MAX))
        .bind(batch.packed)
        .bind(staged::PACKED)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// A batch in one transaction, its staged rows each cut to the room its
/// publisher's outbox has (its oldest dead letters dropped first to make some). With
/// what each publisher's outbox holds after it.
async fn stage_in_transaction(
    conn: &mut SqliteConnection,
    batches: Vec<OutboxBatch>,
    cap: u64,
    settled: &lane::Settled,
) -> Result<(Enqueued, Vec<(String, u64)>), SettingsError> {
    let mut tx = conn.begin_with(IMMEDIATE).await.map_err(db_err)?;
    let mut done = Enqueued::default();
    let mut held_after = Vec::with_capacity(batches.len());
    for mut batch in batches {
        let (room, held) = room_for(&mut tx, &batch.publisher_id, cap, settled).await?;
        let left = usize::try_from(room).unwrap_or(usize::MAX);
        if batch.len() > left {
            done.refused_full += (batch.len() - left) as u64;
            batch.truncate(left);
        }
        held_after.push((batch.publisher_id.clone(), held + batch.len() as u64));
        if batch.is_empty() {
            continue;
        }
        done.written += batch.len() as u64;
        insert_staged(&mut tx, batch).await?;
    }
    tx.commit().await.map_err(db_err)?;
    Ok((done, held_after))
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
    let next: Option<(i64, String, Vec<u8>, i64)> = sqlx::query_as(
        "SELECT id, publisher_id, batch, form FROM webhook_outbox_staged WHERE id > ? ORDER BY id LIMIT 1",
    )
    .bind(lane.read_upto())
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_err)?;
    let Some((id, publisher_id, batch, form)) = next else {
        return Ok(false);
    };
    let events = match staged::unstage(form, &batch, &publisher_id) {
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
    let mut incoming = Vec::with_capacity(events.len());
    for (n, e) in events.iter().enumerate() {
        // A packed event's record is made here: a batch's at once would hold
        // the server's runtime thread this claim runs on.
        if n > 0 && n % staged::CHUNK == 0 {
            tokio::task::yield_now().await;
        }
        incoming.push(Incoming {
            message_id: e.message_id.to_string(),
            ordering_key: e.ordering_key.to_string(),
            event_type: e.event_type.to_string(),
            body: e.body.text().into_owned(),
            created_at: e.created_at,
        });
    }
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
            body: StagedBody::Text(Cow::Borrowed(&e.body)),
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
                .push_bind(e.body.text())
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
